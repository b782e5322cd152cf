"""Memory figures from Triton's Prometheus endpoint: device totals and use, and the memory each
python model publishes about itself (`model_memory_bytes{model,device}`), per device."""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from adapter.core import errors


@dataclass(frozen=True)
class DeviceReading:
    device: str  # "gpu:<uuid>" or "cpu"
    total_bytes: int
    used_bytes: int


def device_key(device: str) -> str:
    """A device name compared loosely: "gpu:GPU-AbC", "gpu:abc" and "GPU-abc" are one GPU (Triton's
    label is DCGM's "GPU-<uuid>"; torch gives the bare uuid)."""
    name = device.strip().lower().removeprefix("gpu:")
    return name.removeprefix("gpu-")


@dataclass(frozen=True)
class MemoryReading:
    devices: list[DeviceReading] = field(default_factory=list)
    models: dict[str, int] = field(default_factory=dict)  # model -> bytes it reports holding
    # model -> the device it reports being on (its metric's `device` label), in `devices`' naming
    model_devices: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(d.total_bytes for d in self.devices)

    @property
    def used_bytes(self) -> int:
        return sum(d.used_bytes for d in self.devices)

    @property
    def on_gpu(self) -> bool:
        return any(d.device.startswith("gpu:") for d in self.devices)

    def device(self, name: str) -> DeviceReading | None:
        """The device called `name` (loosely, see device_key), if this reading has it."""
        key = device_key(name)
        return next((d for d in self.devices if device_key(d.device) == key), None)


def parse_memory(text: str) -> MemoryReading:
    """GPUs when Triton sees any (nv_gpu_memory_*), else the host (nv_cpu_memory_*)."""
    gpu_total: dict[str, int] = {}
    gpu_used: dict[str, int] = {}
    cpu_total = cpu_used = 0
    models: dict[str, int] = {}
    placed: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nv_gpu_memory_total_bytes":
                gpu_total[sample.labels.get("gpu_uuid", "0")] = int(sample.value)
            elif sample.name == "nv_gpu_memory_used_bytes":
                gpu_used[sample.labels.get("gpu_uuid", "0")] = int(sample.value)
            elif sample.name == "nv_cpu_memory_total_bytes":
                cpu_total = int(sample.value)
            elif sample.name == "nv_cpu_memory_used_bytes":
                cpu_used = int(sample.value)
            elif sample.name == "model_memory_bytes" and "model" in sample.labels:
                models[sample.labels["model"]] = int(sample.value)
                if sample.labels.get("device"):
                    placed[sample.labels["model"]] = sample.labels["device"]
    if gpu_total:
        devices = [
            DeviceReading(f"gpu:{uuid}", total, gpu_used.get(uuid, 0)) for uuid, total in sorted(gpu_total.items())
        ]
    elif cpu_total:
        devices = [DeviceReading("cpu", cpu_total, cpu_used)]
    else:
        devices = []
    reading = MemoryReading(devices=devices, models=models)
    for model, label in placed.items():
        device = reading.device(label)
        reading.model_devices[model] = device.device if device is not None else label
    return reading


def freed_bytes(before: MemoryReading | None, after: MemoryReading | None, unloaded: dict[str, int]) -> int:
    """Memory an unload gave back, measured. On GPUs: the devices' drop in use (only Triton's models
    use them). On the host, whose memory every process shares, that drop is noise: the figure is
    what each unloaded model's process reported holding just before (`before.models`), which goes
    back to the system when the process exits. `unloaded` maps each model to the scheduler's figure,
    used when a model reported nothing."""
    if not unloaded:
        return 0
    on_gpu = before is not None and before.on_gpu
    if on_gpu and before is not None and after is not None and before.used_bytes > after.used_bytes:
        return before.used_bytes - after.used_bytes
    reported = before.models if before is not None else {}
    return sum(reported.get(model, figure) for model, figure in unloaded.items())


class TritonMemoryProbe:
    """Reads Triton's metrics endpoint (in a thread: urllib blocks)."""

    def __init__(self, metrics_url: str) -> None:
        self.metrics_url = metrics_url

    async def read(self) -> MemoryReading:
        def fetch() -> str:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
                return str(response.read().decode("utf-8"))

        try:
            return parse_memory(await asyncio.to_thread(fetch))
        except OSError as err:
            raise errors.Unavailable(f"cannot read Triton's metrics at {self.metrics_url}: {err}") from err
