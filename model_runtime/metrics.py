"""Custom Triton metrics for the python models, on Triton's own metrics endpoint.

Takes the `triton_python_backend_utils` module as an argument so this package stays importable
without Triton. A MetricFamily must outlive its metrics (Triton refuses updates otherwise), so
this object keeps every family it made.
"""

from __future__ import annotations

import time
from typing import Any

from model_runtime.model_config import device_label, process_memory_bytes


class ModelMetrics:
    def __init__(self, pb_utils: Any, model_name: str, device: Any = None) -> None:
        """device: where the model's weights are (torch.device); the memory gauge then carries a
        `device` label in the adapter's naming (gpu:GPU-<uuid> or cpu), which is how the adapter
        learns which GPU's budget the model uses."""
        self._pb_utils = pb_utils
        self._families: dict[str, Any] = {}
        self.labels = {"model": model_name}
        self._published_at = 0.0
        self._device = device
        placement = {"device": device_label(device)} if device is not None else {}
        self._memory = self.gauge(
            "model_memory_bytes",
            "Memory held by the model's process (CUDA reserved on its GPU, or resident on CPU)",
            **placement,
        )

    def _family(self, name: str, description: str, kind: Any) -> Any:
        if name not in self._families:
            self._families[name] = self._pb_utils.MetricFamily(name=name, description=description, kind=kind)
        return self._families[name]

    def counter(self, name: str, description: str, **labels: str) -> Any:
        family = self._family(name, description, self._pb_utils.MetricFamily.COUNTER)
        return family.Metric(labels={**self.labels, **labels})

    def gauge(self, name: str, description: str, **labels: str) -> Any:
        family = self._family(name, description, self._pb_utils.MetricFamily.GAUGE)
        return family.Metric(labels={**self.labels, **labels})

    def publish_memory(self, at_most_every_s: float = 0.0, headroom_bytes: int = 0) -> None:
        """Sets model_memory_bytes{model} from this process (the adapter reads it per model);
        skipped when the last update is more recent than at_most_every_s (hot paths).
        headroom_bytes: memory the model has reserved but not allocated yet (the LLM's KV cache
        budget not in use), counted so the adapter's budget holds when it fills."""
        now = time.monotonic()
        if at_most_every_s and now - self._published_at < at_most_every_s:
            return
        self._published_at = now
        self._memory.set(process_memory_bytes(self._device) + max(0, headroom_bytes))
