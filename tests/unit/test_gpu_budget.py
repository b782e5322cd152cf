"""Memory per device on GPU hosts: budgets per GPU, models counted and evicted on the GPU they sit
on, the CUDA context counted, no GPU metrics on a GPU host refused. Fake metrics texts and a fake
Triton with two GPUs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from adapter.config import load_settings
from adapter.core import errors
from adapter.scheduling.scheduler import (
    ANY_DEVICE,
    LOADED,
    UNLOADED,
    NoGpuMetrics,
    Scheduler,
    measure_load,
    plan_budgets,
)
from adapter.triton.memory_readings import DeviceReading, MemoryReading, parse_memory

GIB = 1 << 30
TWO_GPUS = """\
# TYPE nv_cpu_memory_total_bytes gauge
nv_cpu_memory_total_bytes 500000
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 100000
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-aaaa"} 80000
nv_gpu_memory_total_bytes{gpu_uuid="GPU-bbbb"} 24000
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-aaaa"} 30000
nv_gpu_memory_used_bytes{gpu_uuid="GPU-bbbb"} 2000
# TYPE model_memory_bytes gauge
model_memory_bytes{model="llm",device="gpu:GPU-aaaa"} 20000
model_memory_bytes{model="embedding",device="gpu:bbbb"} 900
model_memory_bytes{model="old"} 5
"""
HOST_ONLY = """\
# TYPE nv_cpu_memory_total_bytes gauge
nv_cpu_memory_total_bytes 500000
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 100000
"""


# --- readings ----------------------------------------------------------------------------------


def test_each_gpu_is_its_own_device_and_models_say_where_they_are() -> None:
    reading = parse_memory(TWO_GPUS)
    assert reading.devices == [DeviceReading("gpu:GPU-aaaa", 80000, 30000), DeviceReading("gpu:GPU-bbbb", 24000, 2000)]
    # torch's bare uuid and DCGM's "GPU-" form name the same GPU
    assert reading.model_devices == {"llm": "gpu:GPU-aaaa", "embedding": "gpu:GPU-bbbb"}
    assert reading.models["old"] == 5  # a model without the label still reports its memory


# --- budgets -------------------------------------------------------------------------------------


def test_every_gpu_gets_its_own_budget_never_their_sum() -> None:
    budgets = plan_budgets(parse_memory(TWO_GPUS), None, 0.9, gpu_expected=True)
    assert budgets == {"gpu:GPU-aaaa": 72000, "gpu:GPU-bbbb": 21600}


def test_a_fixed_budget_applies_to_each_gpu() -> None:
    assert plan_budgets(parse_memory(TWO_GPUS), 5000, 0.9, False) == {"gpu:GPU-aaaa": 5000, "gpu:GPU-bbbb": 5000}


def test_without_gpus_the_host_is_the_device() -> None:
    assert plan_budgets(parse_memory(HOST_ONLY), None, 0.5, gpu_expected=False) == {"cpu": 250000}
    assert plan_budgets(parse_memory(HOST_ONLY), 7000, 0.5, gpu_expected=False) == {"cpu": 7000}


def test_a_gpu_host_without_gpu_metrics_is_refused_unless_the_budget_is_fixed() -> None:
    with pytest.raises(NoGpuMetrics, match="VRAM_BUDGET_BYTES"):
        plan_budgets(parse_memory(HOST_ONLY), None, 0.9, gpu_expected=True)
    # With VRAM_BUDGET_BYTES: one GPU budget, not the host's RAM.
    assert plan_budgets(parse_memory(HOST_ONLY), 7000, 0.9, gpu_expected=True) == {ANY_DEVICE: 7000}
    assert plan_budgets(None, 7000, 0.9, gpu_expected=True) == {ANY_DEVICE: 7000}


def test_no_reading_and_no_fixed_budget_is_unavailable() -> None:
    with pytest.raises(errors.Unavailable):
        plan_budgets(None, None, 0.9, gpu_expected=False)


# --- what a load measured -------------------------------------------------------------------------


def _gpus(a: int, b: int, models: dict[str, int] | None = None, placed: dict[str, str] | None = None) -> MemoryReading:
    return MemoryReading(
        [DeviceReading("gpu:GPU-aaaa", 80000, a), DeviceReading("gpu:GPU-bbbb", 24000, b)], models or {}, placed or {}
    )


def test_the_cuda_context_counts_the_device_growth_wins_over_torchs_figure() -> None:
    before, after = _gpus(1000, 1000), _gpus(1000, 1900, {"m": 600}, {"m": "gpu:GPU-bbbb"})
    placement = measure_load("m", before, after)
    assert (placement.device, placement.memory_bytes, placement.source) == ("gpu:GPU-bbbb", 900, "measured")


def test_growth_elsewhere_does_not_count_against_the_model() -> None:
    # GPU a grew (another process), the model is on b and b did not grow more than it reports.
    before, after = _gpus(1000, 1000), _gpus(5000, 1500, {"m": 600}, {"m": "gpu:GPU-bbbb"})
    placement = measure_load("m", before, after)
    assert (placement.device, placement.memory_bytes, placement.source) == ("gpu:GPU-bbbb", 600, "metric")


def test_a_model_that_names_no_device_is_placed_where_memory_grew() -> None:
    placement = measure_load("m", _gpus(1000, 1000), _gpus(1000, 1700))
    assert (placement.device, placement.memory_bytes, placement.source) == ("gpu:GPU-bbbb", 700, "measured")


def test_on_the_host_the_models_own_figure_is_kept() -> None:
    before = MemoryReading([DeviceReading("cpu", 10000, 4000)])
    after = MemoryReading([DeviceReading("cpu", 10000, 9000)], {"m": 300})
    assert measure_load("m", before, after).memory_bytes == 300  # the host's 5000 are other processes


# --- the scheduler on two GPUs -------------------------------------------------------------------

# model -> (GPU it lands on, torch's figure, CUDA context the device also sees)
PLACED = {"a1": ("aaaa", 400, 100), "a2": ("aaaa", 400, 100), "b1": ("bbbb", 400, 100), "big": ("aaaa", 800, 100)}


class TwoGpuTriton:
    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.unloads: list[str] = []
        self.read_at: list[float] = []

    async def model_names(self) -> list[str]:
        return sorted(PLACED)

    async def repository_index(self) -> dict[str, tuple[str, str]]:
        return {name: ("READY", "") for name in self.loaded}

    async def load(self, model: str) -> None:
        self.loaded.add(model)

    async def unload(self, model: str) -> None:
        self.unloads.append(model)
        self.loaded.discard(model)

    async def read(self) -> MemoryReading:
        self.read_at.append(time.monotonic())
        used = {"aaaa": 0, "bbbb": 0}
        for model in self.loaded:
            gpu, own, context = PLACED[model]
            used[gpu] += own + context
        return MemoryReading(
            [DeviceReading("gpu:GPU-aaaa", 1000, used["aaaa"]), DeviceReading("gpu:GPU-bbbb", 1000, used["bbbb"])],
            {m: PLACED[m][1] for m in self.loaded},
            {m: f"gpu:GPU-{PLACED[m][0]}" for m in self.loaded},
        )


def make(budget: int | None = None, fraction: float = 1.0, **kwargs: object) -> tuple[Scheduler, TwoGpuTriton]:
    triton = TwoGpuTriton()
    scheduler = Scheduler(
        triton,
        triton,
        budget_bytes=budget,
        budget_fraction=fraction,
        declared_memory=lambda name: 300,
        settle_s=float(kwargs.pop("settle_s", 0.0)),  # type: ignore[arg-type]
        stub_exit_s=0.0,
        **kwargs,  # type: ignore[arg-type]
    )
    return scheduler, triton


async def test_each_model_is_budgeted_on_its_own_gpu() -> None:
    scheduler, triton = make()
    assert await scheduler.refresh_budget() == 2000
    assert scheduler.budgets == {"gpu:GPU-aaaa": 1000, "gpu:GPU-bbbb": 1000}
    for model in ("a1", "b1"):
        await scheduler.load(model)
    slots = {s.name: s for s in scheduler.slots()}
    assert (slots["a1"].device, slots["b1"].device) == ("gpu:GPU-aaaa", "gpu:GPU-bbbb")
    assert slots["a1"].memory_bytes == 500  # 400 reserved by torch + 100 of CUDA context
    assert scheduler.used_bytes(device="gpu:GPU-aaaa") == 500 and scheduler.used_bytes() == 1000


async def test_eviction_frees_the_gpu_the_model_needs_not_another() -> None:
    scheduler, triton = make()
    await scheduler.refresh_budget()
    for model in ("b1", "a1", "a2"):
        await scheduler.load(model)
    assert triton.unloads == []  # 500 + 500 fit GPU a's 1000
    (await scheduler.slot("big")).device = "gpu:GPU-aaaa"  # measured on an earlier load
    (await scheduler.slot("big")).memory_bytes = 900
    await scheduler.load("big")
    # b1 is the least recently used, but it is on GPU b: unloading it would not help.
    assert triton.unloads == ["a1", "a2"]
    assert {s.name for s in scheduler.slots() if s.state == LOADED} == {"b1", "big"}


async def test_a_model_that_does_not_fit_its_gpu_is_refused_though_another_has_room() -> None:
    scheduler, triton = make(fraction=0.5)
    await scheduler.refresh_budget()
    await scheduler.load("a1")
    await scheduler.pin("a1")
    slot = await scheduler.slot("a2")
    slot.device, slot.memory_bytes = "gpu:GPU-aaaa", 500
    with pytest.raises(errors.ResourceExhausted, match="of device gpu:GPU-aaaa"):
        await scheduler.load("a2")
    assert slot.state != LOADED and (await scheduler.slot("b1")).state == UNLOADED


async def test_a_model_never_placed_counts_against_where_models_land() -> None:
    scheduler, triton = make()
    await scheduler.refresh_budget()
    await scheduler.load("b1")
    assert scheduler.device_of(await scheduler.slot("a1")) == "gpu:GPU-bbbb"


async def test_a_gpu_host_without_gpu_metrics_refuses_to_budget() -> None:
    class HostOnly(TwoGpuTriton):
        async def read(self) -> MemoryReading:
            return parse_memory(HOST_ONLY)

    triton = HostOnly()
    scheduler = Scheduler(
        triton, triton, budget_bytes=None, budget_fraction=0.9, declared_memory=lambda n: 1, gpu_expected=True
    )
    with pytest.raises(NoGpuMetrics):
        await scheduler.refresh_budget()
    fixed = Scheduler(
        triton, triton, budget_bytes=GIB, budget_fraction=0.9, declared_memory=lambda n: 1, gpu_expected=True
    )
    assert await fixed.refresh_budget() == GIB


async def test_gpu_readings_wait_for_tritons_metrics_refresh() -> None:
    scheduler, triton = make(settle_s=0.3)
    await scheduler.refresh_budget()
    started = time.monotonic()
    await scheduler.load("a1")
    # The reading after the load is taken once Triton's metrics can show it.
    assert triton.read_at[-1] - started >= 0.3
    assert (await scheduler.slot("a1")).memory_bytes == 500


async def test_host_readings_do_not_wait() -> None:
    class Host(TwoGpuTriton):
        async def read(self) -> MemoryReading:
            return MemoryReading([DeviceReading("cpu", 100000, 1000)], {m: 10 for m in self.loaded})

    triton = Host()
    scheduler = Scheduler(
        triton, triton, budget_bytes=None, budget_fraction=0.9, declared_memory=lambda n: 1, settle_s=5.0
    )
    await scheduler.refresh_budget()
    await asyncio.wait_for(scheduler.load("a1"), 1.0)
    assert (await scheduler.slot("a1")).device == "cpu"


# --- configuration -------------------------------------------------------------------------------


def test_a_gpu_host_is_what_the_variable_says_else_the_driver_device(tmp_path: Path) -> None:
    assert load_settings({"INFERENCE_REQUIRE_CUDA": "1", "TRITON_URL": "triton:8001"}).gpu_host(tmp_path)
    assert not load_settings({"INFERENCE_REQUIRE_CUDA": "false"}).gpu_host(tmp_path)
    embedded = load_settings({})
    assert not embedded.gpu_host(tmp_path)
    (tmp_path / "nvidiactl").touch()
    assert embedded.gpu_host(tmp_path)
    assert not load_settings({"TRITON_URL": "triton:8001"}).gpu_host(tmp_path)  # cannot see that host


def test_the_embedded_tritons_models_require_cuda_exactly_on_a_gpu_host() -> None:
    assert load_settings({"INFERENCE_REQUIRE_CUDA": "1"}).model_environment()["INFERENCE_REQUIRE_CUDA"] == "1"
    assert load_settings({"INFERENCE_REQUIRE_CUDA": "0"}).model_environment()["INFERENCE_REQUIRE_CUDA"] == "0"
