"""Typed access to a model's config.pbtxt `parameters`, with environment overrides."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ModelParameters:
    """The `parameters { key: ... value: { string_value: ... } }` block of a model config."""

    def __init__(self, model_config_json: str) -> None:
        config = json.loads(model_config_json)
        self.model_name: str = config.get("name", "")
        raw = config.get("parameters", {})
        self._values = {key: value.get("string_value", "") for key, value in raw.items()}

    def string(self, key: str, default: str, env: str | None = None) -> str:
        """The parameter's value; a set, non-empty environment variable `env` wins."""
        if env and os.environ.get(env):
            return os.environ[env]
        value = self._values.get(key, "")
        return value if value != "" else default

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        text = self.string(key, str(default))
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"model parameter {key!r} must be an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"model parameter {key!r} must be >= {minimum}, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        # bool("false") is True: parse the words instead.
        text = self.string(key, "true" if default else "false").strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"model parameter {key!r} must be true or false, got {text!r}")


# Set by the GPU image (docker/triton.Dockerfile): the models must run on CUDA there, and a torch
# that sees no GPU (a wheel built for a newer CUDA than the host driver supports, a container
# started without the GPU) must fail the load loudly instead of serving from the CPU in fp32.
REQUIRE_CUDA_ENV = "INFERENCE_REQUIRE_CUDA"


def cuda_expected(env: dict[str, str] | None = None) -> bool:
    """Whether INFERENCE_REQUIRE_CUDA says this process must run its models on CUDA."""
    value = (os.environ if env is None else env).get(REQUIRE_CUDA_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE or value == "":
        return False
    raise ValueError(f"{REQUIRE_CUDA_ENV} must be true or false, got {value!r}")


def require_cuda_if_expected(env: dict[str, str] | None = None) -> None:
    """Call first in `initialize`: raises (the load fails, naming the cause) when CUDA is expected
    and torch sees no GPU. Says why torch sees none when it can tell."""
    if not cuda_expected(env):
        return
    import torch

    if torch.cuda.is_available():
        return
    built_for = torch.version.cuda or "no CUDA (a CPU-only build)"
    raise RuntimeError(
        f"{REQUIRE_CUDA_ENV}=1 but torch {torch.__version__} sees no CUDA device (torch built for CUDA "
        f"{built_for}). Check that the container was started with the GPU (--gpus / nvidia.com/gpu) and "
        "that the host driver supports that CUDA version (nvidia-smi shows the highest it supports); "
        f"set {REQUIRE_CUDA_ENV}=0 to run on the CPU on purpose."
    )


def pick_device(device_id: int | str | None = None, instance_kind: str | None = None) -> Any:
    """CUDA when torch sees a GPU, else CPU.

    Triton passes each instance `model_instance_kind` and `model_instance_device_id`: with KIND_GPU
    the id is the GPU Triton assigned to this instance, and the model must go there (with several
    GPUs visible, a model that always took cuda:0 would pile every instance onto one GPU while the
    adapter budgets all of them). With KIND_MODEL (our configs: they load on CPU-only hosts too)
    Triton passes 0; the id is still honoured, so an operator can move a model with
    `instance_group [{ kind: KIND_GPU, gpus: [1] }]` without touching code. `CUDA_VISIBLE_DEVICES`
    decides which GPUs are visible (and numbered from 0) in the first place.
    """
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    if instance_kind is not None and str(instance_kind).upper().removeprefix("KIND_") == "CPU":
        return torch.device("cpu")
    index = _device_index(device_id)
    if index is None:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ValueError(f"Triton assigned GPU {index}, but torch sees {count} (CUDA_VISIBLE_DEVICES?)")
    return torch.device("cuda", index)


def triton_device(args: dict[str, Any]) -> Any:
    """pick_device() for the `args` Triton passes to `initialize`."""
    return pick_device(args.get("model_instance_device_id"), args.get("model_instance_kind"))


def _device_index(device_id: int | str | None) -> int | None:
    if device_id is None or str(device_id).strip() == "":
        return None
    try:
        return int(str(device_id).strip())
    except ValueError:
        raise ValueError(f"model_instance_device_id must be an integer, got {device_id!r}") from None


def preferred_dtype(device: Any, bf16: bool = True) -> Any:
    """The weights' dtype on a device: float32 on the CPU (half precision is slow there and some
    kernels lack it); on CUDA bfloat16 where the GPU computes it natively (compute capability 8.0+:
    Ampere, Hopper, Blackwell), float16 otherwise (Turing, Volta). Today's LLMs are trained in bf16
    and overflow in fp16 (Qwen models give garbage: QwenLM/Qwen3#868, #761); bf16=False asks for
    float16 on every GPU (Stable Diffusion 1.5 ships fp16 weights and runs well in them)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return torch.float32
    # The given device's capability (torch.cuda.is_bf16_supported asks the current device only).
    if bf16 and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.bfloat16
    return torch.float16


def device_label(device: Any) -> str:
    """The device as Triton's metrics name it: "gpu:GPU-<uuid>" (nv_gpu_memory_*{gpu_uuid}), or
    "cpu". The adapter reads it from model_memory_bytes{device} to know where the model sits."""
    if getattr(device, "type", str(device)) != "cuda":
        return "cpu"
    import torch

    index = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or index)
    return f"gpu:{uuid if uuid.startswith(('GPU-', 'MIG-')) else 'GPU-' + uuid}"


def process_memory_bytes(device: Any = None) -> int:
    """The memory this model holds: reserved CUDA memory on its GPU, else the process's resident set.

    On a GPU this leaves out the process's CUDA context (hundreds of MB: the driver's, cuBLAS' and
    cuDNN's workspaces), which no API of this process can see; the adapter adds it by measuring
    the device's growth across the load (adapter/scheduling/scheduler.py)."""
    # A model that never imported torch holds no CUDA memory (and should not pay torch's import).
    torch = sys.modules.get("torch")
    on_cuda = device is None or getattr(device, "type", str(device)) == "cuda"
    if torch is not None and on_cuda and torch.cuda.is_available():
        return int(torch.cuda.memory_reserved(device))
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
