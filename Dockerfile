# Tributary: one image for both daemons.
#   docker build -t tributary .
#   docker run --rm tributary source run --config /etc/tributary/site.toml
#   docker run --rm tributary sink run --config /etc/tributary/cloud.toml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package build needs (see .dockerignore); psycopg[binary] and confluent-kafka come
# as wheels with libpq and librdkafka inside, so no compiler or system library is needed.
COPY pyproject.toml README.md ./
COPY cdc ./cdc
COPY sinks ./sinks
COPY schemas ./schemas
RUN pip install --no-cache-dir . \
    && rm -rf /src

# Non-root, with a numeric UID so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 tributary \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tributary
USER 10001:10001
WORKDIR /

# /metrics, /healthz and /readyz when [metrics] port = 9464
EXPOSE 9464
ENTRYPOINT ["cdc"]
CMD ["--help"]
