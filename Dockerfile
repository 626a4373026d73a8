# mediagen: one image for the API, the worker, beat and flower (the command picks the role).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    API_HOST=0.0.0.0 \
    LOCAL_STORAGE_PATH=/data/media

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY mediagen ./mediagen
RUN pip install --no-cache-dir uv==0.13.8 \
 && uv pip install --system --no-cache -c constraints.txt . \
 && useradd --create-home --uid 10001 app \
 && mkdir -p /data/media && chown -R app /data

USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"
CMD ["mediagen", "api"]
