# syntax=docker/dockerfile:1
# The celery-operator image:
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/celery-operator/celery-operator:0.1.0 .
# Stage 1 builds wheels for the operator and every dependency; stage 2 installs only those wheels
# into a clean slim image (no compiler, no index access) that runs as a numeric non-root user.
# Both stages use the same base as sample_tasks/Dockerfile: BASE_IMAGE (the pinned public python
# image by default; the local cluster passes its own, built from Debian by dev/localenv/images.py).

# checkov:skip=CKV_DOCKER_7:the base is ${BASE_IMAGE}, whose default names a fixed tag (python:3.11.14-slim-bookworm); checkov cannot read an ARG's default
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="celery-operator" \
      org.opencontainers.image.description="Kubernetes operator running Celery topologies described as custom resources" \
      org.opencontainers.image.source="https://github.com/celery-operator/celery-operator" \
      org.opencontainers.image.url="https://github.com/celery-operator/celery-operator" \
      org.opencontainers.image.documentation="https://github.com/celery-operator/celery-operator/blob/main/docs/install.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="celery-operator" \
      org.opencontainers.image.version="${VERSION}"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Install only from the wheels built above; 65532 ("nonroot") matches the chart's securityContext.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/celery_operator-*.whl \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /tmp
# One HTTP port: /healthz, /readyz, /metrics.
EXPOSE 8080
# checkov:skip=CKV_DOCKER_2:Kubernetes probes (/healthz, /readyz on 8080) replace a Docker HEALTHCHECK
ENTRYPOINT ["celery-operator", "run"]
