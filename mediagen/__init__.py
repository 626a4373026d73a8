"""mediagen: an asynchronous media-generation service (FastAPI + Celery + Postgres)."""

__version__ = "0.1.0"
