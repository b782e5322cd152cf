"""ManageVRAM's command dispatch (adapter.core.memory.MemoryService.manage, through the gRPC
front's translation): each command reaches
the scheduler, every command is answered under its id (errors too, the stream staying open),
scheduler events and subscribed snapshots are pushed. The real scheduler over a fake Triton."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from google.protobuf.duration_pb2 import Duration

from adapter.core import errors
from adapter.core.memory import MemoryService
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.grpc_front.servicer import manage_vram
from adapter.scheduling.scheduler import Scheduler
from tests.unit.test_scheduler import FakeProbe, FakeTriton, make

Response = pb.ManageVRAMResponse


def service(budget: int = 250) -> tuple[MemoryService, Scheduler, FakeTriton]:
    scheduler, triton, _, _ = make(budget=budget)
    return MemoryService(scheduler, FakeProbe(triton)), scheduler, triton


async def converse(memory: MemoryService, *requests: pb.ManageVRAMRequest, hold_s: float = 0.0) -> list[Response]:
    """Sends the requests, keeps the stream open hold_s longer, half-closes; returns all answers."""

    async def stream() -> AsyncIterator[pb.ManageVRAMRequest]:
        for request in requests:
            yield request
        await asyncio.sleep(hold_s)

    async with asyncio.timeout(10):
        return [response async for response in manage_vram(memory, stream())]


def results(responses: list[Response]) -> dict[str, pb.CommandResult]:
    answered = [r.result for r in responses if r.WhichOneof("payload") == "result"]
    by_id = {result.command_id: result for result in answered}
    assert len(by_id) == len(answered), "one answer per command"
    return by_id


def command(command_id: str, **kwargs: object) -> pb.ManageVRAMRequest:
    return pb.ManageVRAMRequest(command_id=command_id, **kwargs)  # type: ignore[arg-type]


async def test_each_command_reaches_the_scheduler() -> None:
    memory, scheduler, triton = service()
    slot = await scheduler.slot("a")

    answers = results(await converse(memory, command("1", load=pb.LoadModelCommand(model="a"))))
    assert answers["1"].ok and triton.loaded == {"a"}

    assert results(await converse(memory, command("2", pin=pb.PinModelCommand(model="a"))))["2"].ok
    assert slot.pinned
    assert results(await converse(memory, command("3", unpin=pb.UnpinModelCommand(model="a"))))["3"].ok
    assert not slot.pinned

    keep = pb.SetKeepAliveCommand(model="a", keep_alive=Duration(seconds=30, nanos=500_000_000))
    assert results(await converse(memory, command("4", set_keep_alive=keep)))["4"].ok
    assert slot.keep_alive_s == 30.5
    forever = pb.SetKeepAliveCommand(model="a", keep_alive=Duration(seconds=-1))
    assert results(await converse(memory, command("5", set_keep_alive=forever)))["5"].ok
    assert slot.keep_alive_s is None, "negative keeps the model loaded"

    assert results(await converse(memory, command("6", unload=pb.UnloadModelCommand(model="a"))))["6"].ok
    assert triton.loaded == set() and triton.unloads == ["a"]


async def test_get_status_answers_with_a_snapshot() -> None:
    memory, scheduler, _ = service()
    await scheduler.load("b")
    answer = results(await converse(memory, command("s", get_status=pb.GetStatusCommand())))["s"]
    assert answer.ok and answer.HasField("snapshot")
    states = {m.model: m.state for m in answer.snapshot.models}
    assert states == {
        "a": pb.MODEL_STATE_UNLOADED,
        "b": pb.MODEL_STATE_LOADED,
        "big": pb.MODEL_STATE_UNLOADED,
        "c": pb.MODEL_STATE_UNLOADED,
    }
    assert answer.snapshot.budget_bytes == 250
    other = results(await converse(memory, command("l", load=pb.LoadModelCommand(model="a"))))["l"]
    assert not other.HasField("snapshot"), "only get_status answers with the memory picture"


async def test_refused_commands_are_answered_with_their_code_and_the_stream_goes_on() -> None:
    memory, _, triton = service()
    answers = results(
        await converse(
            memory,
            command("unload-idle", unload=pb.UnloadModelCommand(model="a")),
            command("no-model", load=pb.LoadModelCommand(model=" ")),
            command("unknown", pin=pb.PinModelCommand(model="zzz")),
            command("no-command"),
            command("no-keep-alive", set_keep_alive=pb.SetKeepAliveCommand(model="a")),
            command(
                "bad-duration",
                set_keep_alive=pb.SetKeepAliveCommand(model="a", keep_alive=Duration(nanos=-1, seconds=1)),
            ),
            command("negative-interval", subscribe=pb.SubscribeCommand(snapshot_interval=Duration(seconds=-1))),
            command("too-big", load=pb.LoadModelCommand(model="big")),
            command("fine", get_status=pb.GetStatusCommand()),
        )
    )
    expected = {
        "unload-idle": ("FAILED_PRECONDITION", "is not loaded"),
        "no-model": ("INVALID_ARGUMENT", "model is required"),
        "unknown": ("NOT_FOUND", "'zzz' is not in Triton's model repository"),
        "no-command": ("INVALID_ARGUMENT", "no command given"),
        "no-keep-alive": ("INVALID_ARGUMENT", "set_keep_alive.keep_alive is required"),
        "bad-duration": ("INVALID_ARGUMENT", "set_keep_alive.keep_alive"),
        "negative-interval": ("INVALID_ARGUMENT", "must not be negative"),
        "too-big": ("RESOURCE_EXHAUSTED", "needs 500 bytes"),
    }
    assert set(answers) == {*expected, "fine"}
    for command_id, (code, words) in expected.items():
        answer = answers[command_id]
        assert not answer.ok, command_id
        assert (answer.error_code, words in answer.error_message) == (code, True), (command_id, answer)
    assert answers["fine"].ok and answers["fine"].error_code == ""
    assert triton.loads == [] and triton.unloads == [], "refused commands did nothing"


async def test_an_unexpected_failure_is_internal_with_an_incident_and_the_stream_goes_on() -> None:
    memory, scheduler, _ = service()

    async def broken(model: str, pinned: bool = True) -> None:
        raise RuntimeError("a bug")

    scheduler.pin = broken  # type: ignore[method-assign]
    answers = results(
        await converse(
            memory,
            command("bug", pin=pb.PinModelCommand(model="a")),
            command("after", get_status=pb.GetStatusCommand()),
        )
    )
    assert not answers["bug"].ok and answers["bug"].error_code == "INTERNAL"
    assert "incident" in answers["bug"].error_message and "a bug" not in answers["bug"].error_message
    assert answers["after"].ok


async def test_scheduler_events_are_pushed_before_the_answer_of_the_command_that_caused_them() -> None:
    memory, scheduler, _ = service(budget=250)
    await scheduler.load("a")
    await scheduler.load("b")
    responses = await converse(memory, command("c", load=pb.LoadModelCommand(model="c")))
    kinds = [r.WhichOneof("payload") for r in responses]
    assert kinds == ["event", "event", "result"]
    evicted, loaded = responses[0].event, responses[1].event
    assert (evicted.model, evicted.kind, evicted.reason) == (
        "a",
        pb.MODEL_EVENT_KIND_EVICTED,
        "evicted to make room for c",
    )
    assert (loaded.model, loaded.kind, loaded.reason) == ("c", pb.MODEL_EVENT_KIND_LOADED, "requested")
    assert evicted.memory_bytes == 100 and evicted.at.seconds > 0


async def test_events_of_every_kind_reach_the_stream() -> None:
    memory, scheduler, triton = service(budget=1000)
    triton.fail["big"] = "no room on the device"
    responses = await converse(
        memory,
        command("load", load=pb.LoadModelCommand(model="big")),
        command("unload", unload=pb.UnloadModelCommand(model="a")),
    )
    events = [(r.event.model, r.event.kind, r.event.reason) for r in responses if r.WhichOneof("payload") == "event"]
    assert events == [("big", pb.MODEL_EVENT_KIND_LOAD_FAILED, "no room on the device")]
    await scheduler.load("a")
    scheduler.model_missing("a")  # outside any command: pushed to open sessions only
    responses = await converse(memory, command("unload", unload=pb.UnloadModelCommand(model="b")))
    assert [r.WhichOneof("payload") for r in responses] == ["result"]

    async def lose_while_open() -> list[Response]:
        conversation = asyncio.create_task(converse(memory, hold_s=0.2))
        await asyncio.sleep(0.05)
        await scheduler.load("c")
        scheduler.model_missing("c")
        return await conversation

    events = [(r.event.model, r.event.kind, r.event.reason) for r in await lose_while_open()]
    assert events == [
        ("c", pb.MODEL_EVENT_KIND_LOADED, "requested"),
        ("c", pb.MODEL_EVENT_KIND_UNLOADED, "Triton reported it not loaded"),
    ]


async def test_subscribe_pushes_snapshots_until_told_to_stop() -> None:
    memory, _, _ = service()
    interval = Duration(nanos=100_000_000)
    responses = await converse(
        memory, command("sub", subscribe=pb.SubscribeCommand(snapshot_interval=interval)), hold_s=0.45
    )
    assert results(responses)["sub"].ok
    snapshots = [r.snapshot for r in responses if r.WhichOneof("payload") == "snapshot"]
    assert 2 <= len(snapshots) <= 6, len(snapshots)
    assert all(len(s.models) == 4 for s in snapshots)

    responses = await converse(
        memory,
        command("sub", subscribe=pb.SubscribeCommand(snapshot_interval=interval)),
        command("stop", subscribe=pb.SubscribeCommand()),
        hold_s=0.3,
    )
    assert len([r for r in responses if r.WhichOneof("payload") == "snapshot"]) <= 1


async def test_a_broken_request_stream_ends_the_call_with_its_error() -> None:
    memory, _, _ = service()

    async def broken() -> AsyncIterator[pb.ManageVRAMRequest]:
        yield command("1", get_status=pb.GetStatusCommand())
        raise errors.InvalidArgument("undecodable message")

    with pytest.raises(errors.InvalidArgument, match="undecodable"):
        async with asyncio.timeout(10):
            async for _ in manage_vram(memory, broken()):
                pass
