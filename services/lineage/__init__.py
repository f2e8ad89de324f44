"""The lineage service: every event into SQLite, lineage queries over gRPC."""
