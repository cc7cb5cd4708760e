# authz for hosts other than Heroku: gRPC on 50051, HTTP (health, metrics) on 8080.
# No secret is baked in: pass AUTHZ_SSO_SALT, AUTHZ_TOKEN_KEY, ... at run time, and mount the
# callers file (AUTHZ_CALLER_TOKENS) and a volume for /srv/authz/data (or set DATABASE_URL).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/authz
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install '.[otel]'
COPY policies ./policies

# A user of its own, owning only the data directory.
RUN useradd --system --uid 10001 --no-create-home --home-dir /srv/authz authz \
    && mkdir -p /srv/authz/data && chown authz /srv/authz/data
USER 10001

ENV AUTHZ_LISTEN=0.0.0.0:50051 \
    AUTHZ_HTTP_LISTEN=0.0.0.0:8080 \
    AUTHZ_POLICY_DIR=/srv/authz/policies \
    AUTHZ_DATA_DIR=/srv/authz/data \
    AUTHZ_LOG_FORMAT=json
VOLUME ["/srv/authz/data"]
EXPOSE 50051 8080

# GET /healthz on the HTTP listener (plain HTTP: with AUTHZ_TLS_CERT set, replace this check).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['AUTHZ_HTTP_LISTEN'].rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

CMD ["authz", "serve"]
