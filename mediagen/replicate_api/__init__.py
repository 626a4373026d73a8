"""Replicate's HTTP API at `/v1` (docs/replicate-api.md): predictions are mediagen jobs."""
