# syntax=docker/dockerfile:1
# The adapter (gRPC inference.v1.InferenceService and the OpenAI-compatible HTTP API) for an
# external Triton (TRITON_URL).
#
# Build from the repository root (docker-compose.grpc.yml does this):
#   docker build -f docker/adapter.Dockerfile -t inference-platform/adapter:0.1.0 .
#
# It holds no model weights: no torch, transformers, diffusers or nvidia-pytriton (the embedded
# Triton is for local development only). Python 3.11, as CI and local development run.

# ---- build: a virtualenv with the pinned runtime dependencies ----
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Exactly the versions in pyproject.toml (scripts/check_deploy.py checks the two agree).
# numpy < 2 like the models' environment; Pillow decodes and checks input images.
RUN pip install --no-cache-dir \
        grpcio==1.85.3 \
        grpcio-health-checking==1.81.1 \
        grpcio-reflection==1.81.1 \
        protobuf==6.33.6 \
        "tritonclient[grpc]==2.73.0" \
        numpy==1.26.4 \
        prometheus-client==0.23.1 \
        Pillow==13.0.0 \
        fastapi==0.165.0 \
        starlette==1.10.0 \
        pydantic==2.14.4 \
        uvicorn==0.54.0 \
        httptools==0.9.0 \
        python-multipart==0.0.34 \
        jsonschema==4.26.0 \
        Jinja2==3.1.6 \
        huggingface_hub==2.4.0

# ---- runtime: the virtualenv, the adapter's code, a non-root user ----
FROM python:3.11.11-slim-bookworm AS runtime

# Numeric ids so Kubernetes' runAsNonRoot can verify them (same ids as the Triton image).
ARG APP_UID=10001
ARG APP_GID=10001

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IMAGE_DIR=/var/lib/inference/images \
    MODEL_REPOSITORY=/app/model_repository

RUN groupadd --gid "${APP_GID}" inference \
    && useradd --uid "${APP_UID}" --gid "${APP_GID}" --no-log-init --create-home --shell /usr/sbin/nologin inference \
    && mkdir -p /var/lib/inference/images \
    && chown -R "${APP_UID}:${APP_GID}" /var/lib/inference

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY adapter/ /app/adapter/
# The torch-free limits the adapter shares with the models (sampling ranges): only those modules,
# so this image still carries no torch and none of the models' code.
COPY model_runtime/__init__.py model_runtime/sampling_limits.py /app/model_runtime/
# Only the config.pbtxt files are read (each model's memory_estimate_bytes, used until a model
# has been measured); the repository is a few kilobytes.
COPY model_repository/ /app/model_repository/
COPY docker/adapter_healthcheck.py /usr/local/bin/adapter-healthcheck

USER ${APP_UID}:${APP_GID}

# 50051 gRPC (GRPC_PORT), 8080 the OpenAI-compatible HTTP API (OPENAI_HTTP_PORT), 9464 the
# adapter's Prometheus metrics (METRICS_PORT).
EXPOSE 50051 8080 9464
VOLUME ["/var/lib/inference/images"]

# grpc.health.v1 Check on the adapter's own port (plaintext, or TLS when GRPC_USE_TLS is true).
# The gRPC port opens only after the preloaded models are loaded (downloads on a first start can
# take many minutes), hence the long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/usr/local/bin/adapter-healthcheck"]

# SIGTERM: the adapter stops taking calls and lets streams finish (10 s) before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "adapter"]
