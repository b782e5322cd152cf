"""Where and how the models run on a GPU host (model_runtime): CUDA required by the GPU image,
the device Triton assigns, bf16 where the GPU has it, the VAE's memory plan. The CUDA paths run
here on the CPU with torch.cuda's answers replaced."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from model_runtime.images import vae_memory_plan
from model_runtime.metrics import ModelMetrics
from model_runtime.model_config import (
    cuda_expected,
    device_label,
    pick_device,
    preferred_dtype,
    require_cuda_if_expected,
    triton_device,
)


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Pretends torch sees two GPUs: an A100-class one (8.0) and a T4-class one (7.5)."""
    capability = {0: (8, 0), 1: (7, 5)}

    def index(device: Any) -> int:
        if device is None:
            return 0
        return device.index if isinstance(device, torch.device) else int(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[index(device)])
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda device: types.SimpleNamespace(uuid=f"0000000{index(device)}-aaaa-bbbb-cccc-dddddddddddd"),
    )
    return capability


# --- CUDA required by the GPU image ----------------------------------------------------------------


def test_cuda_is_expected_only_when_the_variable_says_so() -> None:
    assert not cuda_expected({})
    assert not cuda_expected({"INFERENCE_REQUIRE_CUDA": "0"})
    assert cuda_expected({"INFERENCE_REQUIRE_CUDA": "1"})
    assert cuda_expected({"INFERENCE_REQUIRE_CUDA": "true"})
    with pytest.raises(ValueError, match="INFERENCE_REQUIRE_CUDA"):
        cuda_expected({"INFERENCE_REQUIRE_CUDA": "maybe"})


def test_a_model_that_expects_cuda_and_sees_none_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError) as raised:
        require_cuda_if_expected({"INFERENCE_REQUIRE_CUDA": "1"})
    message = str(raised.value)
    assert "sees no CUDA device" in message and "driver" in message and torch.__version__ in message


def test_no_expectation_lets_the_cpu_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    require_cuda_if_expected({})  # the local CPU setup
    assert pick_device() == torch.device("cpu")


def test_cuda_present_satisfies_the_expectation(gpus: Any) -> None:
    require_cuda_if_expected({"INFERENCE_REQUIRE_CUDA": "1"})


# --- the device ------------------------------------------------------------------------------------


def test_without_cuda_every_instance_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(1, "KIND_GPU") == torch.device("cpu")
    assert triton_device({"model_instance_kind": "GPU", "model_instance_device_id": "1"}) == torch.device("cpu")


def test_the_gpu_triton_assigns_is_the_one_used(gpus: Any) -> None:
    assert triton_device({"model_instance_kind": "GPU", "model_instance_device_id": "1"}) == torch.device("cuda", 1)
    assert triton_device({"model_instance_kind": "MODEL", "model_instance_device_id": "0"}) == torch.device("cuda", 0)
    assert pick_device(0) == torch.device("cuda", 0)


def test_the_default_call_keeps_its_old_meaning(gpus: Any) -> None:
    assert pick_device() == torch.device("cuda")


def test_a_cpu_instance_stays_on_the_cpu_on_a_gpu_host(gpus: Any) -> None:
    assert triton_device({"model_instance_kind": "CPU", "model_instance_device_id": "0"}) == torch.device("cpu")


def test_a_gpu_torch_does_not_see_is_refused(gpus: Any) -> None:
    with pytest.raises(ValueError, match="assigned GPU 2, but torch sees 2"):
        pick_device("2", "GPU")
    with pytest.raises(ValueError, match="must be an integer"):
        pick_device("first")


# --- the dtype -------------------------------------------------------------------------------------


def test_float32_on_the_cpu() -> None:
    assert preferred_dtype(torch.device("cpu")) == torch.float32


def test_bf16_where_the_gpu_has_it_fp16_elsewhere(gpus: Any) -> None:
    assert preferred_dtype(torch.device("cuda", 0)) == torch.bfloat16  # 8.0: Ampere and later
    assert preferred_dtype(torch.device("cuda", 1)) == torch.float16  # 7.5: Turing
    assert preferred_dtype(torch.device("cuda", 0), bf16=False) == torch.float16


# --- where the model says it is --------------------------------------------------------------------


def test_device_labels_match_tritons_gpu_metrics(gpus: Any) -> None:
    assert device_label(torch.device("cpu")) == "cpu"
    assert device_label(torch.device("cuda", 1)) == "gpu:GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"
    assert device_label(torch.device("cuda")) == "gpu:GPU-00000000-aaaa-bbbb-cccc-dddddddddddd"


class _FakeFamily:
    COUNTER, GAUGE = "counter", "gauge"
    made: list[dict[str, str]] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict[str, str]) -> Any:  # noqa: N802 - pb_utils' spelling
        _FakeFamily.made.append({"family": self.name, **labels})
        return types.SimpleNamespace(set=lambda value: None, increment=lambda value: None)


def test_the_memory_metric_names_the_device_only_when_given() -> None:
    pb_utils = types.SimpleNamespace(MetricFamily=_FakeFamily)
    _FakeFamily.made.clear()
    ModelMetrics(pb_utils, "embedding", torch.device("cpu")).counter("c_total", "a counter")
    ModelMetrics(pb_utils, "llm")
    assert _FakeFamily.made == [
        {"family": "model_memory_bytes", "model": "embedding", "device": "cpu"},
        {"family": "c_total", "model": "embedding"},  # other metrics keep their labels
        {"family": "model_memory_bytes", "model": "llm"},
    ]


# --- the VAE's memory plan -------------------------------------------------------------------------


def test_several_images_are_decoded_one_at_a_time() -> None:
    assert vae_memory_plan(512, 512, 1).slicing is False
    assert vae_memory_plan(512, 512, 4).slicing is True


def test_large_images_are_decoded_in_tiles() -> None:
    assert vae_memory_plan(512, 512, 1).tiling is False
    assert vae_memory_plan(768, 768, 1).tiling is False
    assert vae_memory_plan(1024, 1024, 4).tiling is True
    assert vae_memory_plan(1024, 1024, 1, tiling_above_pixels=0).tiling is False  # 0: never


def test_the_plan_is_set_on_a_real_vae_for_each_call() -> None:
    from diffusers import AutoencoderKL

    from model_runtime.images import apply_vae_plan

    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, sample_size=32)
    apply_vae_plan(vae, vae_memory_plan(1024, 1024, 4))
    assert (vae.use_slicing, vae.use_tiling) == (True, True)
    apply_vae_plan(vae, vae_memory_plan(512, 512, 1))  # the next, small call decodes in one go again
    assert (vae.use_slicing, vae.use_tiling) == (False, False)
