# syntax=docker/dockerfile:1
# The revo image: one image for `revo gateway`, `revo node` and the CLI (docs/deploy.md).
#
#   docker build -t revo .
#   docker run --rm revo gateway          # or: node, status, users ..., plugins
#
# builder: wheels for revo-mesh and every engine under plugins/ (and all their
# dependencies), so the final stage installs offline and carries no build tool.
# final: python slim, the wheels installed, a non-root user; nothing else.
# Checked by tests/deploy/test_image.py (hadolint, and the rules a review would apply).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# extras of revo-mesh the image carries: the Triton client for local models (Triton itself
# runs in its own image, deploy/triton/Dockerfile)
ARG REVO_EXTRAS=triton-client
COPY pyproject.toml README.md ./
COPY mesh/ mesh/
COPY plugins/ plugins/
RUN pip wheel --wheel-dir /wheels ".[${REVO_EXTRAS}]" plugins/*/

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="revo" \
      org.opencontainers.image.description="revo mesh: gateway, node and CLI of a self-hosted mesh of AI engines" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/deploy.md"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REVO_HOME=/var/lib/revo \
    REVO_GATEWAY__ADDRESS=0.0.0.0:50051 \
    REVO_GATEWAY__HTTP_ADDRESS=0.0.0.0:8000 \
    REVO_GATEWAY__METRICS_ADDRESS=0.0.0.0:9464 \
    REVO_NODE__METRICS_ADDRESS=0.0.0.0:9464 \
    REVO_NODE__HEALTH_ADDRESS=0.0.0.0:50052 \
    REVO_NATS__EMBEDDED=false \
    REVO_MODELS__TRITON_EMBEDDED=false \
    REVO_ENVOY__ENABLED=false
# numeric ids, so a runtime (Kubernetes runAsNonRoot) can tell the user is not root
RUN groupadd --system --gid 10001 revo \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/revo --create-home \
            --shell /usr/sbin/nologin revo
# the wheels are mounted from the builder, not copied: no layer keeps them
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl \
 && pip check
COPY --chmod=0755 deploy/image/healthcheck.py /usr/local/bin/revo-healthcheck
USER 10001:10001
WORKDIR /var/lib/revo
# gateway gRPC, gateway HTTP door, Prometheus metrics (gateway or node), node health
EXPOSE 50051 8000 9464 50052
# gRPC health of `revo gateway`, and of `revo node` (node.health_address) (deploy/image/healthcheck.py)
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["revo-healthcheck"]
ENTRYPOINT ["revo"]
CMD ["--help"]
