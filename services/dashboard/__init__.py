"""The dashboard service: web pages of every study, read from lineage's query API."""
