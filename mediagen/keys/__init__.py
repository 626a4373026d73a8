"""API keys: who owns a job. Keys are random, prefixed `mg_`, shown once and stored as a hash."""
