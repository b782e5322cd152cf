"""Continuous (iteration-level) batching for a Hugging Face causal LM, free of Triton.

Every running request shares one forward pass per decoding step. New requests are prefilled
together at the start of a step and merged into the running batch; finished, stopped or cancelled
ones leave at once and their rows of the KV cache are dropped. The idea is TGI's `CausalLMBatch`
(concatenate / filter over a left-padded cache); the code is ours.

Layout of the running batch:
- one `DynamicCache`, keys/values `[rows, kv_heads, columns, head_dim]`, **left padded**: a row's
  real tokens are its last `length` columns;
- `attention_mask` `[rows, columns]` (0 on padding), and per row the next position id.
Per-request state (sampler with its own generator, stop-sequence buffer, incremental detokenizer,
grammar state and tool-call parser) lives beside the batch in `Sequence`, not in it, so every
option holds inside the batch.

Constrained decoding (model_runtime/constrained.py): a request submitted with a `Constraint` gets a
grammar state; at each step the constrained rows' logits are masked together (one bitmask, one
batched fill) before any row is sampled, and each sampled token advances its state. A request
with tool calls has its `<tool_call>` blocks parsed out of its text into tool-call deltas, and
ends with "tool_calls" when it made any.

Limits: at most `max_num_seqs` rows run at once, and the tokens they may grow to (prompt +
max_tokens, reserved when a request is admitted) stay within `kv_cache_tokens`; beyond either,
requests wait in arrival order. A request that could never fit is refused at submission.

Threads: `step()` runs on one engine thread (`start()`), `submit()`/`cancel()` may be called from
any thread, and `deliver` receives each step's outputs on the engine thread (the Triton model
hands them to its own asyncio loop: pb_utils must not be called from here).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tokenizers.decoders import DecodeStream
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from model_runtime.constrained import Constraint, GrammarState, LogitsMasker
from model_runtime.text_generation import (
    InvalidRequest,
    NonFiniteProbabilities,
    SamplingParams,
    SeededSampler,
    StopSequenceBuffer,
    sample_rows,
)
from model_runtime.tool_calls import ToolCallDelta, ToolCallParser, merge_tool_call_deltas

log = logging.getLogger(__name__)

# How many prompt tokens seed the incremental detokenizer, so the first generated token decodes
# with its real leading space (SentencePiece-style tokenizers) instead of as a word start.
DETOKENIZER_CONTEXT = 4


@dataclass(frozen=True)
class StepOutput:
    """What one request got from one step: text to stream, and on its last step why it ended."""

    request_id: int
    text: str = ""
    finish_reason: str | None = None  # "stop", "length", "tool_calls", "cancelled" or "error" on the last output
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: bool = False  # this output carries the request's first generated token
    tool_calls: tuple[ToolCallDelta, ...] = ()  # tool-call deltas parsed out of this output's text

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Sequence:
    request_id: int
    prompt_ids: list[int]
    params: SamplingParams
    sampler: SeededSampler
    stops: StopSequenceBuffer
    detokenizer: DecodeStream
    generated: list[int] = field(default_factory=list)
    done: bool = False
    grammar: GrammarState | None = None  # a constrained request's place in its grammar
    tool_parser: ToolCallParser | None = None

    @property
    def reserved_tokens(self) -> int:
        return len(self.prompt_ids) + self.params.max_tokens

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.generated)

    @property
    def needs_history(self) -> bool:
        return self.sampler.has_penalties

    @property
    def greedy_and_plain(self) -> bool:
        """Sampling reduces to argmax: the whole batch's such rows are chosen in one call."""
        return self.params.temperature == 0 and not self.needs_history


@dataclass(frozen=True)
class EngineStats:
    waiting: int
    running: int
    kv_cache_usage: float  # tokens held by running rows / kv_cache_tokens, in [0, 1]


class BatchingEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: torch.device,
        *,
        max_num_seqs: int,
        kv_cache_tokens: int,
        max_prefill_tokens: int = 4096,
        deliver: Callable[[list[StepOutput]], None] = lambda outputs: None,
        eos_token_ids: set[int] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_num_seqs = max_num_seqs
        self.kv_cache_tokens = kv_cache_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.deliver = deliver
        self.eos_token_ids = eos_token_ids if eos_token_ids is not None else _eos_ids(model, tokenizer)
        self._backend = tokenizer._tokenizer  # the Rust tokenizer DecodeStream steps with
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[Sequence] = deque()
        self._cancelled: set[int] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # The running batch (engine thread only).
        self._rows: list[Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._last_tokens: torch.Tensor | None = None
        self.kv_bytes_per_token = 0  # measured by warm_up()
        self._masker: LogitsMasker | None = None  # made by the first constrained request

    # --- any thread ----------------------------------------------------------------------------

    def submit(
        self, request_id: int, prompt_ids: list[int], params: SamplingParams, constraint: Constraint | None = None
    ) -> None:
        """Queues a request; its outputs come through `deliver`. Refuses one that can never fit.
        `constraint`: the grammar its output must follow (compiled already: not on this thread)."""
        needed = len(prompt_ids) + params.max_tokens
        if needed > self.kv_cache_tokens:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) needs {needed} tokens of "
                f"KV cache; this model instance holds at most {self.kv_cache_tokens} (kv_cache_tokens)"
            )
        if not prompt_ids:
            raise InvalidRequest("the prompt has no tokens")
        context = prompt_ids[-DETOKENIZER_CONTEXT:]
        sequence = Sequence(
            request_id=request_id,
            prompt_ids=list(prompt_ids),
            params=params,
            sampler=SeededSampler(params, len(prompt_ids), self.device),
            stops=StopSequenceBuffer(params.stop),
            detokenizer=DecodeStream(ids=context, skip_special_tokens=True),
            grammar=constraint.start() if constraint is not None else None,
            tool_parser=ToolCallParser() if constraint is not None and constraint.tool_calls else None,
        )
        if constraint is not None and self._masker is None:
            self._masker = LogitsMasker()
        with self._wake:
            self._waiting.append(sequence)
            self._wake.notify()

    def cancel(self, request_id: int) -> None:
        """Ends the request at the next step (its last output says "cancelled")."""
        with self._wake:
            self._cancelled.add(request_id)
            self._wake.notify()

    def stats(self) -> EngineStats:
        with self._lock:
            waiting = len(self._waiting)
        rows = list(self._rows)
        held = sum(s.length for s in rows)
        return EngineStats(waiting, len(rows), min(1.0, held / self.kv_cache_tokens))

    def warm_up(self) -> None:
        """One forward of a one-token prompt at load time: the first forward is the slow one, an
        unsupported cache layout fails the load instead of a request, and it measures the KV cache's
        bytes per token (for the memory the model reports)."""
        cache = DynamicCache(config=self.model.config)
        one = torch.tensor([[self._pad_id]], device=self.device)
        self._forward(one, torch.ones_like(one), torch.zeros_like(one), cache)
        _check_cache_layers(cache)
        self.kv_bytes_per_token = sum(
            layer.keys.element_size() * layer.keys[0, :, 0, :].numel() * 2 for layer in _layers(cache)
        )

    def check_budget_fits(self) -> None:
        """Fails the load when the KV cache budget could never be allocated on this device (free
        memory now, after the weights): better than an out-of-memory error mid-batch."""
        needed = self.kv_cache_tokens * self.kv_bytes_per_token
        free = _free_device_bytes(self.device)
        if needed > free:
            raise ValueError(
                f"kv_cache_tokens={self.kv_cache_tokens} needs {needed / 2**20:.0f} MiB of KV cache "
                f"({self.kv_bytes_per_token} bytes per token) but {self.device} has {free / 2**20:.0f} MiB free: "
                "lower kv_cache_tokens in config.pbtxt"
            )

    def kv_headroom_bytes(self) -> int:
        """KV cache memory reserved (kv_cache_tokens) but not allocated now."""
        mask = self._mask
        allocated = 0 if mask is None else int(mask.shape[0] * mask.shape[1])
        return max(0, self.kv_cache_tokens - allocated) * self.kv_bytes_per_token

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="batching-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Cancels what is left and joins the engine thread."""
        with self._wake:
            self._stopping = True
            self._cancelled.update(s.request_id for s in self._waiting)
            self._cancelled.update(s.request_id for s in self._rows)
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # --- engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._rows or self._cancelled or self._stopping):
                    self._wake.wait()
                if self._stopping and not (self._waiting or self._rows):
                    return
            try:
                for outputs in self._step():
                    if outputs:
                        self.deliver(outputs)
            except Exception:  # noqa: BLE001 - the step already ended the affected requests
                log.exception("batching step failed")

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._waiting or self._rows)

    def step(self) -> list[StepOutput]:
        """One iteration (see _step); returns what each request got."""
        return [output for part in self._step() for output in part]

    def _step(self) -> Iterator[list[StepOutput]]:
        """Drops cancelled requests, admits and prefills waiting ones (their first token) into the
        running batch, then one decoding step for the whole batch. Yields its outputs in two parts,
        so the first tokens go out before the decoding step (time to first token is one step
        shorter than after it)."""
        outputs: list[StepOutput] = []
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                for sequence in [s for s in self._waiting if s.request_id in cancelled]:
                    self._waiting.remove(sequence)
                    outputs.append(self._finish(sequence, "cancelled"))
        if cancelled:
            for sequence in self._rows:
                if sequence.request_id in cancelled:
                    outputs.append(self._finish(sequence, "cancelled"))
            self._remove_done()
        admitted = self._admit()
        if admitted:
            self._prefill(admitted, outputs)
        yield outputs
        outputs = []
        if self._rows:
            self._decode(outputs)
        yield outputs

    def _admit(self) -> list[Sequence]:
        """Waiting requests that fit now, in arrival order (the first that does not fit blocks the
        rest, so a long request is never starved by short ones)."""
        reserved = sum(s.reserved_tokens for s in self._rows)
        admitted: list[Sequence] = []
        with self._lock:
            while self._waiting and len(self._rows) + len(admitted) < self.max_num_seqs:
                head = self._waiting[0]
                if reserved + head.reserved_tokens > self.kv_cache_tokens:
                    break
                width = max([len(s.prompt_ids) for s in admitted] + [len(head.prompt_ids)])
                if admitted and width * (len(admitted) + 1) > self.max_prefill_tokens:
                    break  # the next step prefills it: one huge prefill would stall every stream
                admitted.append(self._waiting.popleft())
                reserved += head.reserved_tokens
        return admitted

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache) -> Any:
        with torch.inference_mode():
            return self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,  # only the last position's logits: no [rows, columns, vocab] tensor
            ).logits[:, -1, :]

    def _prefill(self, admitted: list[Sequence], outputs: list[StepOutput]) -> None:
        """One left-padded forward over the new prompts; their first tokens; merge into the batch."""
        width = max(len(s.prompt_ids) for s in admitted)
        ids = torch.full((len(admitted), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(admitted), width), dtype=torch.long)
        for row, sequence in enumerate(admitted):
            n = len(sequence.prompt_ids)
            ids[row, width - n :] = torch.tensor(sequence.prompt_ids, dtype=torch.long)
            mask[row, width - n :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        try:
            logits = self._forward(ids, mask, positions, cache)
            _check_cache_layers(cache)
        except Exception as err:  # noqa: BLE001 - only these requests were in this forward
            log.exception("prefill failed")
            outputs.extend(self._finish(s, "error", f"{type(err).__name__}: {err}") for s in admitted)
            return
        chosen = self._choose(admitted, logits, outputs)
        last = torch.tensor([[token if token is not None else self._pad_id] for token in chosen], device=self.device)
        self._merge(admitted, cache, mask, positions[:, -1:] + 1, last)
        self._remove_done()  # those that ended on their very first token, or failed

    def _decode(self, outputs: list[StepOutput]) -> None:
        """One token for every running row."""
        assert self._cache is not None and self._mask is not None
        assert self._positions is not None and self._last_tokens is not None
        ones = torch.ones((len(self._rows), 1), dtype=self._mask.dtype, device=self.device)
        mask = torch.cat([self._mask, ones], 1)
        try:
            logits = self._forward(self._last_tokens, mask, self._positions, self._cache)
        except Exception as err:  # noqa: BLE001 - the batch shared this forward: all of it ends
            log.exception("decoding step failed")
            message = f"{type(err).__name__}: {err}"
            outputs.extend(self._finish(s, "error", message) for s in self._rows)
            self._reset()
            return
        self._mask = mask
        self._positions = self._positions + 1
        chosen = self._choose(self._rows, logits, outputs)
        self._last_tokens = torch.tensor(
            [[token if token is not None else self._pad_id] for token in chosen], device=self.device
        )
        self._remove_done()

    # --- sampling and text ---------------------------------------------------------------------

    def _choose(self, rows: list[Sequence], logits: torch.Tensor, outputs: list[StepOutput]) -> list[int | None]:
        """Picks each row's next token with its own options and generator (greedy rows in one
        argmax, the sampled ones in one `sample_rows`); records it, streams its text, and ends the
        row when it is done. A row whose sampling fails ends with an error; the others go on."""
        tokens: list[int | None] = [None] * len(rows)
        failed: dict[int, str] = {}
        constrained = [(i, s.grammar) for i, s in enumerate(rows) if s.grammar is not None]
        if constrained:
            assert self._masker is not None
            try:
                # Before penalties and sampling: a forbidden token is -inf whatever comes after.
                self._masker.mask(logits, [i for i, _ in constrained], [state for _, state in constrained])
            except Exception as err:  # noqa: BLE001 - unmasked rows must not be sampled; the free ones go on
                log.exception("constrained decoding failed")
                failed.update((i, f"constrained decoding failed: {type(err).__name__}: {err}") for i, _ in constrained)
        greedy = [i for i, s in enumerate(rows) if s.greedy_and_plain and i not in failed]
        if greedy:
            picks = logits[greedy].argmax(dim=-1).tolist()
            for i, token in zip(greedy, picks, strict=True):
                tokens[i] = int(token)
        others = [i for i, s in enumerate(rows) if not s.greedy_and_plain and i not in failed]
        if others:
            block = logits[others].float()
            for j, i in enumerate(others):
                sequence = rows[i]
                if sequence.needs_history:
                    history = torch.tensor([sequence.prompt_ids + sequence.generated], device=self.device)
                    try:
                        block[j : j + 1] = sequence.sampler.penalize(history, block[j : j + 1])
                    except Exception as err:  # noqa: BLE001 - this request's failure ends this request
                        failed[i] = f"sampling failed: {type(err).__name__}: {err}"
            live = [j for j, i in enumerate(others) if i not in failed]
            if live:
                picked = self._sample(block[live], [rows[others[j]] for j in live], failed, [others[j] for j in live])
                for i, token in picked.items():
                    tokens[i] = token
        for i, sequence in enumerate(rows):
            if i in failed:
                log.error("sampling failed for request %s: %s", sequence.request_id, failed[i])
                outputs.append(self._finish(sequence, "error", failed[i]))
            token = tokens[i]
            if token is not None:
                outputs.append(self._advance(sequence, token))
        return tokens

    def _sample(
        self, block: torch.Tensor, rows: list[Sequence], failed: dict[int, str], positions: list[int]
    ) -> dict[int, int]:
        """sample_rows over the block; rows with non-finite probabilities are set aside as failed
        (a numerical failure of that request) and the rest sampled again without them."""
        try:
            picks = sample_rows(block, [s.params for s in rows], [s.sampler.generator for s in rows])
        except NonFiniteProbabilities as err:
            bad = set(err.args[0])
            for j in bad:
                failed[positions[j]] = "sampling failed: the model's probabilities are not finite (NaN or inf)"
            keep = [j for j in range(len(rows)) if j not in bad]
            if not keep:
                return {}
            return self._sample(block[keep], [rows[j] for j in keep], failed, [positions[j] for j in keep])
        return {position: int(token) for position, token in zip(positions, picks.flatten().tolist(), strict=True)}

    def _advance(self, sequence: Sequence, token: int) -> StepOutput:
        first = not sequence.generated
        sequence.generated.append(token)
        if sequence.grammar is not None and not sequence.grammar.accept(token):
            # The mask allowed only what the grammar accepts: this is a bug, not the request's.
            log.error("request %s: the grammar refused token %s it had allowed", sequence.request_id, token)
            return self._finish(sequence, "error", "constrained decoding failed: the grammar refused a token")
        if token in self.eos_token_ids:
            # The model ended its answer: release what was held back in case it began a stop.
            return self._finish(sequence, "stop", text=sequence.stops.flush(), first_token=first)
        piece = sequence.detokenizer.step(self._backend, token)  # None: inside a multi-byte character
        text, stop_met = sequence.stops.push(piece) if piece else ("", False)
        if stop_met:
            return self._finish(sequence, "stop", text=text, first_token=first)
        if len(sequence.generated) >= sequence.params.max_tokens:
            return self._finish(sequence, "length", text=text + sequence.stops.flush(), first_token=first)
        if sequence.tool_parser is None:
            return StepOutput(sequence.request_id, text=text, first_token=first)
        content, deltas = sequence.tool_parser.push(text)
        return StepOutput(sequence.request_id, text=content, first_token=first, tool_calls=tuple(deltas))

    def _finish(
        self, sequence: Sequence, reason: str, error: str = "", text: str = "", first_token: bool = False
    ) -> StepOutput:
        sequence.done = True  # leaves the batch at the end of this step
        deltas: list[ToolCallDelta] = []
        parser = sequence.tool_parser
        if parser is not None and reason in ("stop", "length"):
            text, deltas = parser.push(text)
            rest, _ = parser.finish()
            text += rest
            if reason == "stop" and parser.calls:
                reason = "tool_calls"
        return StepOutput(
            sequence.request_id,
            text=text,
            finish_reason=reason,
            error=error,
            prompt_tokens=len(sequence.prompt_ids),
            completion_tokens=len(sequence.generated),
            first_token=first_token,
            tool_calls=tuple(deltas),
        )

    # --- the batch's tensors -------------------------------------------------------------------

    def _merge(
        self, rows: list[Sequence], cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor, last: torch.Tensor
    ) -> None:
        if not self._rows:
            self._rows, self._cache, self._mask, self._positions, self._last_tokens = rows, cache, mask, positions, last
            return
        assert self._cache is not None and self._mask is not None
        assert self._positions is not None and self._last_tokens is not None
        old_width, new_width = self._mask.shape[1], mask.shape[1]
        width = max(old_width, new_width)
        for mine, theirs in zip(_layers(self._cache), _layers(cache), strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)], 0)
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)], 0)
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)], 0)
        self._positions = torch.cat([self._positions, positions], 0)
        self._last_tokens = torch.cat([self._last_tokens, last], 0)
        self._rows = self._rows + rows

    def _remove_done(self) -> None:
        """Drops finished rows from the batch and their rows from the KV cache."""
        keep = [i for i, s in enumerate(self._rows) if not s.done]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._reset()
            return
        assert self._cache is not None and self._mask is not None
        assert self._positions is not None and self._last_tokens is not None
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        mask = self._mask[index]
        # Columns that are padding in every remaining row are dead weight: trim them.
        live = int(mask.any(dim=0).nonzero()[0]) if bool(mask.any()) else mask.shape[1]
        if live:
            for layer in _layers(self._cache):
                layer.keys = layer.keys[:, :, live:, :]
                layer.values = layer.values[:, :, live:, :]
            mask = mask[:, live:]
        self._mask = mask
        self._positions = self._positions[index]
        self._last_tokens = self._last_tokens[index]
        self._rows = [self._rows[i] for i in keep]

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._positions, self._last_tokens = [], None, None, None, None


def merge_outputs(outputs: list[StepOutput]) -> list[StepOutput]:
    """One output per request from several steps' outputs, in order: the texts joined, the end
    (and counts) from the last. A server that fell behind its engine then sends one response per
    request instead of one per token, and everyone downstream has that much less to do."""
    merged: dict[int, StepOutput] = {}
    for output in outputs:
        before = merged.get(output.request_id)
        if before is not None:
            output = replace(
                output,
                text=before.text + output.text,
                first_token=before.first_token,
                tool_calls=tuple(merge_tool_call_deltas([*before.tool_calls, *output.tool_calls])),
            )
        merged[output.request_id] = output
    return list(merged.values())


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Pads dimension 2 (cache: [rows, heads, columns, dim]) or 1 (mask) on the left to `width`."""
    dim = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim)


def _free_device_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # no figure: nothing to check against


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers (each a DynamicLayer: _check_cache_layers made sure) with their tensors."""
    return list(cache.layers)


def _check_cache_layers(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"the batching engine handles full-attention caches only; this model uses {type(layer).__name__}"
            )


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def wait_until_idle(engine: BatchingEngine, timeout_s: float = 60.0) -> None:
    """Test helper: blocks until nothing waits or runs."""
    deadline = time.monotonic() + timeout_s
    while engine.has_work():
        if time.monotonic() > deadline:
            raise TimeoutError("the engine still has work")
        time.sleep(0.01)
