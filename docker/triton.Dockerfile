# syntax=docker/dockerfile:1
# Triton Inference Server with the python-backend models of model_repository/.
#
# Build from the repository root (docker-compose.grpc.yml does this):
#   docker build -f docker/triton.Dockerfile -t inference-platform/triton:0.1.0 .
#
# Base image: 24.12 is Triton 2.53 on Ubuntu 24.04 with Python 3.12. The python backend's stub
# runs the models with the image's system python3, and transformers 5.24 needs Python >= 3.11,
# so the 24.10 image (Triton 2.51, the version pytriton embeds locally, but Python 3.10) cannot
# run our pinned stack. 24.12 is the closest release that can, and still supports compute
# capability 6.0+ GPUs (25.02 and later need 7.5+). Driver: R560+ for the image's CUDA 12.6;
# torch brings its own CUDA runtime (see TORCH_INDEX_URL below).
FROM nvcr.io/nvidia/tritonserver:24.12-py3

# Where to look for torch besides PyPI. Empty: PyPI's torch 2.13.0, built for CUDA 13, which
# needs host driver R580 or newer. For an older driver point this at the PyTorch wheel index of
# a CUDA version the driver supports; the pin (torch==2.13.0) still applies to it.
ARG TORCH_INDEX_URL=""

# Numeric ids: Kubernetes' runAsNonRoot can only verify a numeric USER, and the uid of the base
# image's own triton-server user is not the same in every release. 10001 matches the adapter image
# and the manifests in docker/k8s/.
ARG APP_UID=10001
ARG APP_GID=10001

# Hugging Face cache (weights downloaded on first load): a volume in compose, a PVC in Kubernetes.
ENV HF_HOME=/var/cache/huggingface \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The model stack, the same exact versions as pyproject.toml (scripts/check_deploy.py checks the
# two agree). numpy stays < 2: the python backend's BYTES tensors break with numpy 2 (TRITON_NOTES.md).
# PIP_BREAK_SYSTEM_PACKAGES: Ubuntu 24.04 marks its python3 as externally managed; this image's
# system python3 *is* the models' interpreter, so that is where the packages must go.
RUN set -eu; \
    if [ -n "${TORCH_INDEX_URL}" ]; then export PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}"; fi; \
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir \
        torch==2.13.0 \
        transformers==5.24.0 \
        tokenizers==0.23.3 \
        diffusers==0.42.1 \
        numpy==1.26.4 \
        Pillow==13.0.0

# The non-root user that runs tritonserver and owns the weight cache.
RUN groupadd --gid "${APP_GID}" inference \
    && useradd --uid "${APP_UID}" --gid "${APP_GID}" --no-log-init --create-home --shell /usr/sbin/nologin inference \
    && mkdir -p "${HF_HOME}" \
    && chown "${APP_UID}:${APP_GID}" "${HF_HOME}"

# The models import model_runtime/. A .pth file in the system site-packages puts /opt/inference
# on sys.path of every python3, the backend stub included (the stub does not always honour
# PYTHONPATH; the .pth works either way). PYTHONPATH is set as well for tools run by hand.
COPY model_runtime/ /opt/inference/model_runtime/
RUN python3 -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'inference-platform.pth').write_text('/opt/inference\n')" \
    && python3 -c "import model_runtime.model_config"
ENV PYTHONPATH=/opt/inference

# The repository is baked in so the image runs alone; compose and Kubernetes may mount another.
COPY model_repository/ /models/

USER ${APP_UID}:${APP_GID}
WORKDIR /home/inference

# 8000 HTTP (health, used by the probes), 8001 gRPC (the adapter), 8002 Prometheus metrics.
EXPOSE 8000 8001 8002

# Readiness: with explicit model control and no model loaded yet, ready means the server is up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]

# Explicit model control: the adapter loads and unloads models (its scheduler owns the memory
# budget), so nothing is loaded at start. --disable-auto-complete-config: our configs are complete,
# and auto-complete would spawn an extra stub importing torch per load. --exit-timeout-secs lets
# in-flight streams finish on SIGTERM (Kubernetes grace period and compose stop_grace_period are
# longer than this). --strict-readiness=false: ready means "server up", so one model that failed
# to load (the adapter reports it per request) does not take the whole pod out of rotation.
CMD ["tritonserver", \
     "--model-repository=/models", \
     "--model-control-mode=explicit", \
     "--disable-auto-complete-config", \
     "--strict-readiness=false", \
     "--allow-metrics=true", \
     "--allow-gpu-metrics=true", \
     "--metrics-port=8002", \
     "--exit-timeout-secs=30", \
     "--log-info=true"]
