"""Prints the ratios of the latest benchmark tables (benchmarks/results/*.md): the end of `make bench`.

.venv/bin/python -m benchmarks.summary
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _rows(path: Path) -> list[dict[str, str]]:
    """The first markdown table of a file, as dicts keyed by its header."""
    header: list[str] | None = None
    rows = []
    for line in path.read_text().splitlines():
        if not line.startswith("|"):
            if header is not None:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-: "):
            rows.append(dict(zip(header, cells, strict=False)))
    return rows


def main() -> None:
    streaming = RESULTS / "streaming.md"
    if streaming.exists():
        print("Streaming, adapter / Triton direct (text chunks/s; added time to first chunk):")
        for row in _rows(streaming):
            if row.get("path") == "adapter":
                print(
                    f"  {row['model']:13s} {row['rpc']:8s} {row['streams']:>3s} streams: {row['ratio chunks/s']} "
                    f"chunks/s, TTFC p50 / p99 {row['added TTFC p50 / p99 ms']} ms, {row['chunks/msg']} chunks/msg"
                )
    front = RESULTS / "openai_front.md"
    if front.exists():
        print("Streamed chat, HTTP front / gRPC front (chunks/s; added time to first chunk):")
        for row in _rows(front):
            if row.get("HTTP / gRPC chunks/s"):
                print(
                    f"  {row['model']:13s} {row['streams']:>3s} streams: {row['HTTP / gRPC chunks/s']} chunks/s, "
                    f"TTFC p50 / p99 {row['added TTFC p50 / p99 ms']} ms"
                )
    batching = RESULTS / "batching.md"
    if batching.exists():
        print("Continuous batching, llm ChatStream (tokens/s, growth over 1 stream, adapter / direct):")
        for row in _rows(batching):
            if row.get("path") == "adapter":
                print(
                    f"  {row['weights']:5s} {row['streams']:>3s} streams: {row['tokens/s']:>5s} tokens/s, "
                    f"{row['x 1 stream']} of 1 stream, TTFC p50 {row['TTFC p50']} ms, {row['adapter / direct']} direct"
                )
    embeddings = RESULTS / "embeddings.md"
    if embeddings.exists():
        print("Embeddings, adapter / Triton direct (embeddings/s):")
        for row in _rows(embeddings):
            if row.get("path") == "adapter":
                print(f"  batching {row['dynamic batching']:3s} {row['clients']:>3s} clients: {row['ratio']}")
    images = RESULTS / "images.md"
    if images.exists():
        for row in _rows(images):
            if "adapter / direct" in row.get("measure", ""):
                print(f"Image job, adapter / direct (whole job time): {row['value']}")
    constrained = RESULTS / "constrained.md"
    if constrained.exists():
        print("Constrained decoding, json_schema / free (tokens/s, same model and concurrency):")
        for row in _rows(constrained):
            print(f"  {row['weights']:5s} {row['streams']:>3s} streams: {row['constrained / free']}")
    loads = RESULTS / "model_loads.md"
    if loads.exists():
        print("Model loads, adapter / Triton's raw load (median seconds):")
        for row in _rows(loads):
            print(f"  {row['model']:10s} {row['what']:13s}: {row['ratio adapter/direct']}")


if __name__ == "__main__":
    main()
