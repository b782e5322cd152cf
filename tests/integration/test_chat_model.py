"""The trained chat model `make run` serves (SmolLM2-135M-Instruct), through the adapter: replies that
mean something. Greedy decoding, so each answer is the model's single most likely reply."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import CHAT_LLM, start_adapter, stop_adapter

PIRATE_WORDS = ("aye", "arr", "matey", "ahoy", "scurvy", "captain", "me hearty")


@pytest.fixture(scope="module")
def chat_stub(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.InferenceServiceStub]:
    workdir = tmp_path_factory.mktemp("chat-model")
    running = start_adapter(
        workdir / "adapter.log",
        env={"LLM_MODEL_ID": str(CHAT_LLM), "PRELOAD_MODELS": "llm", "IMAGE_DIR": str(workdir / "images")},
    )
    try:
        with running.channel() as channel:
            yield pb_grpc.InferenceServiceStub(channel)
    finally:
        stop_adapter(running)


def ask(
    stub: pb_grpc.InferenceServiceStub, *turns: tuple[str, str], max_tokens: int = 32, stop: tuple[str, ...] = ()
) -> tuple[str, pb.ChatStreamResponse]:
    request = pb.ChatStreamRequest(
        model="llm",
        messages=[pb.ChatMessage(role=role, content=content) for role, content in turns],
        options=pb.GenerationOptions(max_tokens=max_tokens, temperature=0, stop=list(stop)),
    )
    responses = list(stub.ChatStream(request, timeout=120))
    return "".join(r.delta for r in responses), responses[-1]


def test_the_capital_of_france_is_paris(chat_stub: pb_grpc.InferenceServiceStub) -> None:
    text, last = ask(chat_stub, ("user", "What is the capital of France?"))
    assert "Paris" in text, text
    assert last.finish_reason == pb.FINISH_REASON_STOP  # the model ended its answer itself


def test_a_system_prompt_is_honoured(chat_stub: pb_grpc.InferenceServiceStub) -> None:
    plain, _ = ask(chat_stub, ("user", "Hello, who are you?"))
    pirate, _ = ask(chat_stub, ("system", "You are a pirate. Talk like a pirate."), ("user", "Hello, who are you?"))
    assert any(word in pirate.lower() for word in PIRATE_WORDS), pirate
    assert not any(word in plain.lower() for word in PIRATE_WORDS), plain


def test_a_stop_sequence_ends_the_answer(chat_stub: pb_grpc.InferenceServiceStub) -> None:
    counting = ("user", "Count from 1 to 10, separated by commas.")
    full, _ = ask(chat_stub, counting)
    assert full.startswith("1, 2, 3, 4, 5"), full
    text, last = ask(chat_stub, counting, stop=(", 5",))
    assert text == "1, 2, 3, 4"
    assert last.finish_reason == pb.FINISH_REASON_STOP


def test_a_conversation_keeps_its_context(chat_stub: pb_grpc.InferenceServiceStub) -> None:
    text, _ = ask(
        chat_stub,
        ("user", "I have a dog named Max."),
        ("assistant", "That's lovely! Max sounds like a great companion."),
        ("user", "What is my dog's name?"),
    )
    assert "Max" in text, text
    # Asked alone, the same question cannot be answered with the name.
    alone, _ = ask(chat_stub, ("user", "What is my dog's name?"))
    assert "Max" not in alone, alone


def test_an_unknown_role_is_refused(chat_stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        ask(chat_stub, ("narrator", "Once upon a time"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
