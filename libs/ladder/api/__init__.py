"""The Python API: tune your own training loop (see ``ladder.api.study``)."""
