# mediagen: two images from one Dockerfile (docker-compose.yml builds both).
#   app (the default target): the API, the worker, beat and migrations (the command picks the
#       role). EXTRAS is what it installs: the server, and the built-in generator, which is
#       the provider while REPLICATE_API_TOKEN is unset (the stack's default). An image for
#       Replicate only: --build-arg EXTRAS=server.
#   flower: the Celery monitor, the server and Flower; no generator, no HTTP health check.
# Neither has the embedded Postgres/Redis (compose runs real ones) nor the development tools;
# uv installs, and is removed in the same layer.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    API_HOST=0.0.0.0 \
    LOCAL_STORAGE_PATH=/data/media

WORKDIR /app
RUN useradd --create-home --uid 10001 app \
 && mkdir -p /data/media && chown -R app /data
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY mediagen ./mediagen

FROM base AS flower
RUN pip install --no-cache-dir uv==0.13.8 \
 && uv pip install --system --no-cache -c constraints.txt ".[flower]" \
 && pip uninstall -y -q uv
USER app
EXPOSE 5555
CMD ["mediagen", "flower", "--port=5555"]

FROM base AS app
ARG EXTRAS=server,builtin
RUN pip install --no-cache-dir uv==0.13.8 \
 && uv pip install --system --no-cache -c constraints.txt ".[${EXTRAS}]" \
 && pip uninstall -y -q uv
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"
CMD ["mediagen", "api"]
