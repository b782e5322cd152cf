"""Talking to the embedded Triton directly (bypassing the adapter), to compare and to look inside."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc


def non_streamed_chat(triton_url: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
    """The LLM model's whole reply in one response (stream=false), straight from Triton."""
    inputs = []
    for name, value in (("messages", json.dumps(messages)), ("sampling_parameters", json.dumps(sampling))):
        tensor = triton_grpc.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
        inputs.append(tensor)
    # Not streamed, without the prompt in front of the answer (vLLM's default for stream=false).
    for name, flag in (("stream", False), ("exclude_input_in_output", True)):
        tensor = triton_grpc.InferInput(name, [1], "BOOL")
        tensor.set_data_from_numpy(np.array([flag]))
        inputs.append(tensor)

    results: list[Any] = []
    client = triton_grpc.InferenceServerClient(triton_url)
    try:
        client.start_stream(callback=lambda result, error: results.append(error or result))
        client.async_stream_infer("llm", inputs)
    finally:
        client.stop_stream()  # waits for the responses of the open request
        client.close()
    assert len(results) == 1, f"expected one response, got {results}"
    assert not isinstance(results[0], Exception), results[0]
    return str(results[0].as_numpy("text_output")[0].decode())


def metric_values(metrics_url: str, name: str) -> dict[str, float]:
    """Every sample of a Prometheus metric on Triton's endpoint, by its label string."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if match:
            samples[match.group(1) or ""] = float(match.group(2))
    return samples


def metric_total(metrics_url: str, name: str, **labels: str) -> float:
    want = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(v for k, v in metric_values(metrics_url, name).items() if all(w in k for w in want))


def triton_is_live(triton_url: str) -> bool:
    try:
        return bool(triton_grpc.InferenceServerClient(triton_url).is_server_live())
    except (grpc.RpcError, Exception):  # noqa: BLE001
        return False
