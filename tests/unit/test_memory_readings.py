"""Memory figures read from Triton's metrics text, and what an unload is reported to free."""

from __future__ import annotations

from adapter.triton.memory_readings import DeviceReading, MemoryReading, freed_bytes, parse_memory

CPU_TEXT = """\
# TYPE nv_cpu_memory_total_bytes gauge
nv_cpu_memory_total_bytes 1000
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 600
# TYPE model_memory_bytes gauge
model_memory_bytes{model="llm"} 200
model_memory_bytes{model="embedding"} 100
"""

GPU_TEXT = (
    CPU_TEXT
    + """\
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-b"} 80
nv_gpu_memory_total_bytes{gpu_uuid="GPU-a"} 40
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-a"} 10
nv_gpu_memory_used_bytes{gpu_uuid="GPU-b"} 30
"""
)


def test_the_host_is_the_device_when_triton_sees_no_gpu() -> None:
    reading = parse_memory(CPU_TEXT)
    assert reading.devices == [DeviceReading("cpu", 1000, 600)]
    assert reading.models == {"llm": 200, "embedding": 100}


def test_gpus_replace_the_host_and_are_listed_in_a_stable_order() -> None:
    reading = parse_memory(GPU_TEXT)
    assert reading.devices == [DeviceReading("gpu:GPU-a", 40, 10), DeviceReading("gpu:GPU-b", 80, 30)]
    assert (reading.total_bytes, reading.used_bytes) == (120, 40)


def test_no_device_metrics_yet_is_an_empty_reading() -> None:
    assert parse_memory("").devices == []


def _gpu(used: int, models: dict[str, int] | None = None) -> MemoryReading:
    return MemoryReading([DeviceReading("gpu:0", 1000, used)], models or {})


def _cpu(used: int, models: dict[str, int]) -> MemoryReading:
    return MemoryReading([DeviceReading("cpu", 10_000, used)], models)


def test_on_a_gpu_the_freed_memory_is_the_devices_drop() -> None:
    assert freed_bytes(_gpu(700, {"llm": 300}), _gpu(350), {"llm": 250}) == 350


def test_on_the_host_the_freed_memory_is_what_each_model_reported_just_before() -> None:
    # The host's use moved by 5000 because of other processes: not a measure of the unload.
    before, after = _cpu(9000, {"llm": 300, "image": 500}), _cpu(4000, {})
    assert freed_bytes(before, after, {"llm": 250}) == 300
    assert freed_bytes(before, after, {"llm": 250, "other": 40}) == 340  # no report: scheduler's figure


def test_nothing_unloaded_frees_nothing_and_no_reading_falls_back_to_the_figures() -> None:
    assert freed_bytes(_gpu(700), _gpu(100), {}) == 0
    assert freed_bytes(None, None, {"llm": 250}) == 250
    assert freed_bytes(_gpu(700), _gpu(800), {"llm": 250}) == 250  # the device grew meanwhile
