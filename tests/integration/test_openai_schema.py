"""A bounded property-based run of schemathesis against the HTTP front's own OpenAPI schema
(/openapi.json), on a real adapter: whatever it sends, valid or not, the answer is never a 5xx,
its status is one the schema documents, and its body matches the schema for that status."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.core.failures import FailureGroup

from tests.harness import RunningAdapter, start_adapter, stop_adapter

# What generated requests may cost: the CPU here is two shared cores, so the models' work is kept
# small by the adapter's own limits (requests past them get a 400 the schema documents) and, for
# text, by capping max_tokens in each generated body (the one cost no limit of ours bounds).
LIMITS = {
    "IMAGE_MAX_WIDTH": "64",
    "IMAGE_MAX_HEIGHT": "64",
    "IMAGE_MAX_STEPS": "2",
    "IMAGE_MAX_NUM_IMAGES": "2",
    "EMBEDDING_MAX_INPUTS": "8",
}
MAX_TOKENS = 8
TEXT_ROUTES = ("/v1/chat/completions", "/v1/completions")
EXAMPLES = 15  # per route and mode
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def http_adapter(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    workdir = tmp_path_factory.mktemp("schemathesis")
    running = start_adapter(
        workdir / "adapter.log",
        env={"IMAGE_DIR": str(workdir / "images"), "MODEL_KEEP_ALIVE_SECONDS": "-1", **LIMITS},
    )
    try:
        yield running
    finally:
        stop_adapter(running)


# A random model name is answered 404 at once: valid requests name a served model, so that they
# reach the core and Triton (invalid ones keep what was generated: the model may be what is wrong).
MODELS = {
    "/v1/chat/completions": "llm",
    "/v1/completions": "llm",
    "/v1/embeddings": "embedding",
    "/v1/images/generations": "image",
    "/v1/images/edits": "image",
}


def _coherent_conversation(body: dict[str, Any]) -> None:
    """The rules of a conversation no JSON schema states (a tool message answers a call made
    before it; some message has text), made to hold in a valid case by adding messages around the
    generated ones: otherwise nearly every generated chat is refused and none reaches the model."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    coherent: list[Any] = []
    for message in messages:
        call_id = message.get("tool_call_id") if isinstance(message, dict) else None
        if isinstance(message, dict) and message.get("role") == "tool" and isinstance(call_id, str):
            call = {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}
            coherent.append({"role": "assistant", "tool_calls": [call]})
        coherent.append(message)
    coherent.append({"role": "user", "content": "Hello"})
    body["messages"] = coherent


def _bounded(case: schemathesis.Case, mode: GenerationMode) -> None:
    if isinstance(case.body, dict) and mode is GenerationMode.POSITIVE and case.path in MODELS:
        case.body["model"] = MODELS[case.path]
        if case.path == "/v1/chat/completions":
            _coherent_conversation(case.body)
    if isinstance(case.body, dict) and case.path in TEXT_ROUTES:
        for name in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                case.body[name] = MAX_TOKENS
        if case.body.get("max_tokens") is None and case.body.get("max_completion_tokens") is None:
            case.body.setdefault("max_tokens", MAX_TOKENS)


def _runner(operation: Any, mode: GenerationMode, adapter: RunningAdapter, counts: Counter[int]) -> Callable[[], None]:
    """A bounded hypothesis run over one operation, counting the statuses it got."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        _bounded(case, mode)
        try:
            response = case.call_and_validate(base_url=adapter.http_url, checks=CHECKS, timeout=60)
        except FailureGroup:
            print(adapter.log_tail(30))
            raise
        counts[response.status_code] += 1

    result: Callable[[], None] = run
    return result


# Both modes: schema-valid requests (answered 2xx or a documented 4xx), and schema-invalid ones
# (which must be refused with a 4xx). Derandomized: the same bounded run every time.
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_every_route_answers_within_its_schema(http_adapter: RunningAdapter, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{http_adapter.http_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8  # models (2), chat, completions, embeddings, images (2), health

    exercised = []
    statuses: dict[str, Counter[int]] = {}
    for operation in operations:
        label = operation.label
        counts = statuses.setdefault(label, Counter())

        run = _runner(operation, mode, http_adapter, counts)
        try:
            run()
        except Unsatisfiable:
            # A route with nothing to get wrong (GET /v1/models, /health) has no invalid requests.
            assert mode is GenerationMode.NEGATIVE and not operation.body, f"{label}: no examples"
            continue
        exercised.append(label)
    assert len(exercised) >= 5, exercised  # at least every POST route
    if mode is GenerationMode.POSITIVE:
        # Valid requests reached the models (random bytes are no picture: edits end 400 here).
        for route in ("chat/completions", "completions", "embeddings", "images/generations"):
            assert statuses[f"POST /v1/{route}"][200] > 0, statuses
