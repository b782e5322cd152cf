# syntax=docker/dockerfile:1
# Triton Inference Server with the python-backend models of model_repository/.
#
# Build from the repository root (docker-compose.grpc.yml does this):
#   docker build -f docker/triton.Dockerfile -t inference-platform/triton:0.1.0 .
#
# Base image and torch are picked together (scripts/check_deploy.py checks they agree):
# - 25.01 is Triton 2.54 on Ubuntu 24.04 with Python 3.12 and CUDA 12.8. The python backend's
#   stub runs the models with the image's python3 and transformers 5.24 needs Python >= 3.11, so
#   the 24.10 image (Triton 2.51, the version pytriton embeds locally, Python 3.10) cannot run our
#   pinned stack.
# - torch comes from PyTorch's wheel index for the same CUDA (cu128), not from PyPI: PyPI's
#   torch==2.13.0 is built for CUDA 13.0, which needs host driver R580+ and dropped Volta, Pascal
#   and Maxwell. With an older driver torch.cuda.is_available() is simply false, and the models
#   used to load on the CPU in fp32 with no error (INFERENCE_REQUIRE_CUDA below makes that a failed
#   load now).
# Minimum host driver: R570, what CUDA 12.8 needs (NVIDIA's release notes for the image also list
# older long-term branches for data-center GPUs, through CUDA forward compatibility). GPUs:
# compute capability 7.5+ (Turing and newer), what NVIDIA's 25.x images support.
# For another CUDA, change the base image and TORCH_CUDA together: make check-deploy refuses a
# pair that does not match (scripts/check_deploy.py, BASE_IMAGE_CUDA). If PyTorch's index has no
# torch==2.13.0 for that CUDA, the build stops at the torch step ("No matching distribution").
FROM nvcr.io/nvidia/tritonserver:25.01-py3

# bash with pipefail: a failing step of a RUN fails the build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The CUDA version of torch's wheels and PyTorch's index of them (a mirror of it may replace the
# URL; its cuXYZ must stay TORCH_CUDA's). The build fails if the torch it installed is built for
# another CUDA than TORCH_CUDA.
ARG TORCH_CUDA=12.8
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# Numeric ids: Kubernetes' runAsNonRoot can only verify a numeric USER, and the uid of the base
# image's own triton-server user is not the same in every release. 10001 matches the adapter image
# and the manifests in docker/k8s/.
ARG APP_UID=10001
ARG APP_GID=10001

# Hugging Face cache (weights downloaded on first load): a volume in compose, a PVC in Kubernetes.
# INFERENCE_REQUIRE_CUDA: every model's initialize() fails, saying why, when torch sees no GPU
# (model_runtime/model_config.py), instead of serving from the CPU while the adapter's budget is
# sized from the GPU.
# The model stack lives in a virtualenv first on PATH: the python backend's stub embeds the first
# python3 on PATH, so the models run with the venv's packages. The image's own python3 keeps
# Debian's pip 24.0, setuptools 68.1.2 and wheel 0.42.0 (apt packages, no RECORD file), which pip
# cannot uninstall; torch 2.13 requires setuptools>=77.0.3, so installing it into the system
# python fails ("Cannot uninstall setuptools 68.1.2 ... installed by debian", Triton PR #7768).
# Inside the venv nothing is Debian's, and nothing of the base image's python is changed.
ENV HF_HOME=/var/cache/huggingface \
    INFERENCE_REQUIRE_CUDA=1 \
    VIRTUAL_ENV=/opt/inference/venv \
    PATH=/opt/inference/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The base image ships virtualenv (installed by pip for the python backend); no --system-site-packages:
# the venv must not see Debian's packages either.
RUN /usr/bin/python3 -m virtualenv --no-periodic-update "${VIRTUAL_ENV}" \
    && python3 -c "import sys; assert sys.prefix == '${VIRTUAL_ENV}', sys.prefix"

# torch first, alone, from PyTorch's index for TORCH_CUDA (--index-url: its torch==2.13.0 is the
# +cu128 build, and PyPI's CUDA 13 build cannot be picked instead); then a check, at build time
# and without a GPU, that the wheel is built for the CUDA this image is made for.
RUN python3 -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        torch==2.13.0 \
    && python3 -c "import torch, sys; v = torch.version.cuda or 'none'; sys.exit(0 if v.split('.')[:2] == '${TORCH_CUDA}'.split('.') else f'torch {torch.__version__} is built for CUDA {v}, not ${TORCH_CUDA}')"

# The rest of the model stack, the same exact versions as pyproject.toml (scripts/check_deploy.py
# checks the two agree); torch is already satisfied. numpy stays < 2: the python backend's BYTES
# tensors break with numpy 2 (docs/triton-notes.md).
RUN python3 -m pip install --no-cache-dir \
        transformers==5.24.0 \
        tokenizers==0.23.3 \
        diffusers==0.42.1 \
        numpy==1.26.4 \
        Pillow==13.0.0 \
        xgrammar==0.2.9 \
    && python3 -c "import torch, transformers, diffusers, xgrammar; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

# The non-root user that runs tritonserver and owns the weight cache.
RUN groupadd --gid "${APP_GID}" inference \
    && useradd --uid "${APP_UID}" --gid "${APP_GID}" --no-log-init --create-home --shell /usr/sbin/nologin inference \
    && mkdir -p "${HF_HOME}" \
    && chown "${APP_UID}:${APP_GID}" "${HF_HOME}"

# The models import model_runtime/. A .pth file in the venv's site-packages puts /opt/inference
# on sys.path of its python3, the backend stub included (the stub does not always honour
# PYTHONPATH; the .pth works either way). PYTHONPATH is set as well for tools run by hand.
COPY model_runtime/ /opt/inference/model_runtime/
RUN python3 -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'inference-platform.pth').write_text('/opt/inference\n')" \
    && python3 -c "import model_runtime.model_config"
ENV PYTHONPATH=/opt/inference

# The repository is baked in so the image runs alone; compose and Kubernetes may mount another.
COPY model_repository/ /models/

USER ${APP_UID}:${APP_GID}
WORKDIR /home/inference

# 8001 gRPC (the adapter), 8002 Prometheus metrics. HTTP (8000: health, for the healthcheck and
# probes run inside the container) listens on the container's loopback only: like gRPC it carries
# model control (loading a model runs its code).
EXPOSE 8001 8002

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
     "--http-address=127.0.0.1", \
     "--disable-auto-complete-config", \
     "--strict-readiness=false", \
     "--allow-metrics=true", \
     "--allow-gpu-metrics=true", \
     "--metrics-port=8002", \
     "--exit-timeout-secs=30", \
     "--log-info=true"]
