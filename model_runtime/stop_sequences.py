"""Stop sequences in streamed text, free of torch: the LLM model and the test-only models share it."""

from __future__ import annotations


class StopSequenceBuffer:
    """Releases streamed text, holding back only what could still become a stop sequence."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Adds text; returns (text safe to emit, whether a stop sequence was met)."""
        self.pending += text
        if not self.stops:
            emit, self.pending = self.pending, ""
            return emit, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            emit = self.pending[: min(hits)]
            self.pending = ""
            return emit, True
        hold = 0
        for k in range(min(len(self.pending), max(len(s) for s in self.stops) - 1), 0, -1):
            tail = self.pending[-k:]
            if any(s.startswith(tail) for s in self.stops):
                hold = k
                break
        emit = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(emit) :]
        return emit, False

    def flush(self) -> str:
        """The text still held when generation ends without a stop sequence."""
        rest, self.pending = self.pending, ""
        return rest
