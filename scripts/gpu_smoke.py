#!/usr/bin/env python3
"""GPU smoke test: the adapter on the embedded Triton with CUDA, one request per model, memory
figures against nvidia-smi, unload and memory back. Run by scripts/gpu_smoke.sh (which prepares
the environment); prints a table and exits 1 when a check fails.

What is compared, per model:
  own      model_memory_bytes{model} from Triton's metrics (torch's reserved CUDA memory), and
           its device label
  sched    the scheduler's figure (GetMemoryStats memory_bytes and memory_source): the larger of
           `own` and the device's growth across the load, so it includes the CUDA context
  smi      nvidia-smi's per-process memory of the model's stub process(es), which includes the
           context: what really occupies the GPU
  freed    the GPU's used memory (nvidia-smi) before minus after the unload
The checks: the request succeeds on CUDA (the models fail their load if CUDA is expected and
absent: INFERENCE_REQUIRE_CUDA=1); sched is within 25 % (or 256 MiB) of smi where nvidia-smi can
attribute memory to processes; own is below smi (it leaves the context out, which is why the
scheduler does not rely on it alone); freed is at least 80 % of smi (or of sched); the stub is gone.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from adapter.gen.inference.v1 import inference_pb2 as pb  # noqa: E402
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402
from adapter.triton.memory_readings import parse_memory  # noqa: E402
from tests.harness import TINY_LLM, start_adapter, stop_adapter, stub_pids  # noqa: E402

MIB = 1 << 20
MODELS = ("llm", "embedding", "image")


@dataclass
class Row:
    model: str
    request: str = "-"
    seconds: float = 0.0
    device: str = "-"
    own: int = 0
    sched: int = 0
    source: str = "-"
    smi: int | None = None
    freed: int | None = None
    stub_gone: bool = False
    problems: list[str] = field(default_factory=list)


def smi_csv(query: str, kind: str = "--query-gpu") -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", f"{kind}={query}", "--format=csv,noheader,nounits"], capture_output=True, text=True, check=True
    ).stdout
    return [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(out)) if row]


def gpu_used_bytes() -> int:
    return sum(int(row[0]) * MIB for row in smi_csv("memory.used"))


def process_bytes(pids: set[int]) -> int | None:
    """nvidia-smi's memory of these processes; None where it cannot attribute memory to them (in a
    container without the host's PID namespace the PIDs it lists are the host's)."""
    rows = smi_csv("pid,used_memory", "--query-compute-apps")
    found = [int(row[1]) * MIB for row in rows if row[0].isdigit() and int(row[0]) in pids and row[1].isdigit()]
    return sum(found) if found else None


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def run_request(stub: pb_grpc.InferenceServiceStub, model: str) -> str:
    if model == "llm":
        request = pb.ChatStreamRequest(
            model="llm",
            messages=[pb.ChatMessage(role="user", content="Say hello.")],
            options=pb.GenerationOptions(max_tokens=16, temperature=0),
        )
        chunks = list(stub.ChatStream(request, timeout=180))
        return f"{sum(len(c.delta) for c in chunks)} chars"
    if model == "embedding":
        response = stub.GetEmbedding(
            pb.GetEmbeddingRequest(model="embedding", inputs=["a GPU smoke test", "another one"]), timeout=180
        )
        return f"{len(response.embeddings)}x{response.dimension}"
    job = stub.GenerateImage(
        pb.GenerateImageRequest(
            model="image", prompt="a red square", options=pb.ImageOptions(width=64, height=64, steps=2)
        ),
        timeout=60,
    ).job_id
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id=job), timeout=30)
        if status.state == pb.JOB_STATE_SUCCEEDED:
            return f"{len(status.images)} image(s)"
        if status.state == pb.JOB_STATE_FAILED:
            raise RuntimeError(f"image job failed: {status.error_message}")
        time.sleep(0.1)
    raise RuntimeError("image job did not finish in 180 s")


def unload(stub: pb_grpc.InferenceServiceStub, model: str) -> None:
    def commands() -> Iterator[pb.ManageVRAMRequest]:
        yield pb.ManageVRAMRequest(command_id="unload", unload=pb.UnloadModelCommand(model=model))

    for response in stub.ManageVRAM(commands(), timeout=120):
        if response.HasField("result") and response.result.command_id == "unload":
            if not response.result.ok:
                raise RuntimeError(f"unload {model}: {response.result.error_code} {response.result.error_message}")
            return


def smoke(log: Path, settle_s: float, require_cuda: bool = True) -> list[Row]:
    adapter = start_adapter(
        log,
        env={
            "INFERENCE_REQUIRE_CUDA": "1" if require_cuda else "0",
            "PRELOAD_MODELS": "",
            "LLM_MODEL_ID": str(TINY_LLM),
        },
        wait_s=240,
    )
    rows = []
    try:
        with adapter.channel() as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            for model in MODELS:
                row = Row(model)
                rows.append(row)
                started = time.monotonic()
                try:
                    row.request = run_request(stub, model)
                except Exception as err:  # noqa: BLE001 - reported in the table
                    row.request = "FAILED"
                    row.problems.append(f"request failed: {err}")
                    continue
                row.seconds = time.monotonic() - started
                time.sleep(settle_s)  # Triton's GPU metrics refresh every 2 s
                reading = parse_memory(scrape(adapter.triton_metrics_url))
                row.own = reading.models.get(model, 0)
                row.device = reading.model_devices.get(model, "-")
                stats = stub.GetMemoryStats(pb.GetMemoryStatsRequest(), timeout=30).snapshot
                slot = next(m for m in stats.models if m.model == model)
                row.sched, row.source = slot.memory_bytes, slot.memory_source
                pids = stub_pids(adapter, model)
                row.smi = process_bytes(pids)
                if not row.device.startswith("gpu:"):
                    row.problems.append(f"the model reports device {row.device!r}, not a GPU")
                reference = row.smi if row.smi is not None else None
                if reference is not None and abs(row.sched - reference) > max(0.25 * reference, 256 * MIB):
                    row.problems.append(f"scheduler {row.sched / MIB:.0f} MiB vs nvidia-smi {reference / MIB:.0f} MiB")
                if reference is not None and row.own > reference:
                    row.problems.append("the model's own figure exceeds nvidia-smi's")
                before = gpu_used_bytes()
                unload(stub, model)
                time.sleep(settle_s + 3)  # the stub exits 1-3 s after the unload
                row.freed = before - gpu_used_bytes()
                row.stub_gone = not any(Path(f"/proc/{pid}").exists() for pid in pids)
                expected = row.smi if row.smi is not None else row.sched
                if row.freed < 0.8 * expected:
                    row.problems.append(f"only {row.freed / MIB:.0f} MiB came back of {expected / MIB:.0f} MiB")
                if not row.stub_gone:
                    row.problems.append("the stub process is still running after the unload")
    finally:
        stop_adapter(adapter)
    return rows


def table(rows: list[Row]) -> str:
    def mib(value: int | None) -> str:
        return "n/a" if value is None else f"{value / MIB:.0f}"

    header = (
        "model",
        "request",
        "s",
        "device",
        "own MiB",
        "sched MiB (source)",
        "smi MiB",
        "freed MiB",
        "stub gone",
        "ok",
    )
    lines = [header]
    for r in rows:
        lines.append(
            (
                r.model,
                r.request,
                f"{r.seconds:.1f}",
                r.device[:24],
                mib(r.own),
                f"{mib(r.sched)} ({r.source})",
                mib(r.smi),
                mib(r.freed),
                "yes" if r.stub_gone else "no",
                "yes" if not r.problems else "NO",
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        text.extend(f"  {r.model}: {problem}" for problem in r.problems)
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--log", type=Path, default=Path("gpu_smoke_adapter.log"))
    parser.add_argument("--settle", type=float, default=2.5, help="seconds for Triton's GPU metrics to refresh")
    parser.add_argument(
        "--no-require-cuda",
        action="store_true",
        help="let the models run on the CPU (to try the script itself on a machine without a GPU; "
        "the GPU checks then fail)",
    )
    args = parser.parse_args()
    gpus = smi_csv("name,driver_version,memory.total")
    print("GPUs:", "; ".join(f"{n} (driver {d}, {int(m)} MiB)" for n, d, m in gpus), flush=True)
    rows = smoke(args.log.resolve(), args.settle, require_cuda=not args.no_require_cuda)
    print(table(rows))
    failed = [r for r in rows if r.problems]
    print(f"gpu smoke: {'FAILED' if failed else 'ok'} ({len(rows) - len(failed)}/{len(rows)} models); log: {args.log}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
