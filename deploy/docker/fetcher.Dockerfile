# syntax=docker/dockerfile:1
# mailsync fetcher image. Build from the repository root: make images (or
#   docker build -f deploy/docker/fetcher.Dockerfile -t mailsync-fetcher .)
# The four service Dockerfiles differ only in the service name (tests/unit/test_deploy_files.py).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve the locked dependencies and the project into a virtualenv -------------------
FROM ${PYTHON_IMAGE} AS build
# uv from PyPI, pinned like deploy/local/python.sh; only in this stage.
RUN pip install --no-cache-dir "uv==0.13.9"
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock README.md LICENSE ./
RUN uv sync --frozen --no-dev --extra otlp --no-install-project --python /usr/local/bin/python3
COPY contracts ./contracts
COPY mailsync ./mailsync
COPY services ./services
# --no-editable: the project is installed into site-packages, so the final stage needs no sources.
RUN uv sync --frozen --no-dev --extra otlp --no-editable --python /usr/local/bin/python3

# --- final: interpreter + virtualenv, no build tools, non-root, read-only root filesystem ------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mailsync-fetcher" \
      org.opencontainers.image.licenses="GPL-3.0-or-later" \
      org.opencontainers.image.description="mailsync fetcher service"
RUN groupadd --system --gid 10001 mailsync \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mailsync \
 && { pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true; }
COPY --from=build --chown=root:root /app/.venv /app/.venv
# Bytecode is compiled at build time; nothing is written at run time, so the root filesystem can be
# mounted read-only (the chart sets readOnlyRootFilesystem and mounts an emptyDir at /tmp).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MAILSYNC_HTTP_HOST=0.0.0.0 \
    MAILSYNC_HTTP_PORT=8080
WORKDIR /app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "services.fetcher"]
