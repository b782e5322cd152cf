"""Bugs the property-based fuzzing (tests/integration/test_fuzz.py) found, each pinned by a unit test:
every one answered INTERNAL (or a transport error) before its fix."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from PIL import Image
from tritonclient.utils import InferenceServerException

from adapter.config import Settings
from adapter.core import errors, image_inputs
from adapter.core import types as t
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.grpc_front import convert
from adapter.grpc_front.status import grpc_code, to_status
from adapter.scheduling.scheduler import ModelState
from adapter.triton import errors as triton_errors


def test_long_messages_are_cut_to_fit_grpc_trailers() -> None:
    # A 100,000-character model name echoed in NOT_FOUND made the client drop the status
    # (RESOURCE_EXHAUSTED "received metadata size exceeds hard limit").
    err = errors.NotFound(f"model {'x' * 100_000!r} is not in Triton's model repository (available: llm)")
    assert len(err.message.encode()) <= errors.MAX_MESSAGE_BYTES + 64
    assert err.message.startswith("model 'xxx") and err.message.endswith("(available: llm)")
    assert "characters cut" in err.message
    assert errors.shorten("\U0001f600" * 2000).encode()  # cut inside a multi-byte character: still UTF-8
    assert errors.NotFound("short").message == "short"


@pytest.mark.parametrize(
    "message",
    [
        "unexpected inference input 'messages' for model 'embedding'",
        "[request id: <id_unknown>] expected 2 inputs but got 1 inputs for model 'llm'",
    ],
)
def test_in_band_triton_request_checks_are_invalid_argument(message: str) -> None:
    # ChatStream/GenerateStream to a model of another kind: Triton's in-band error has no status.
    err = InferenceServerException(msg=message)
    assert triton_errors.triton_status(err) == grpc.StatusCode.INVALID_ARGUMENT
    mapped = to_status(err, "ChatStream")
    assert grpc_code(mapped.code) == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a model of the kind this RPC needs" in mapped.message and message in mapped.message


def test_unknown_in_band_triton_errors_stay_internal() -> None:
    assert triton_errors.triton_status(InferenceServerException(msg="stub crashed")) is None
    assert (
        grpc_code(to_status(InferenceServerException(msg="stub crashed"), "ChatStream").code)
        == grpc.StatusCode.INTERNAL
    )


def test_unimplemented_from_triton_is_invalid_argument() -> None:
    # GetEmbedding with a decoupled (streaming) model: ModelInfer answers UNIMPLEMENTED.
    err = InferenceServerException(
        msg="ModelInfer RPC doesn't support models with decoupled transaction policy", status="StatusCode.UNIMPLEMENTED"
    )
    mapped = triton_errors.from_triton(err, "embedding with 'llm'")
    assert grpc_code(mapped.code) == grpc.StatusCode.INVALID_ARGUMENT
    assert "embedding with 'llm'" in mapped.message


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(2**62, 0), (-(2**63), 0), (315_576_000_001, 0), (1, 1_000_000_000), (0, -(2**31))]
)
def test_out_of_range_durations_are_invalid_argument(seconds: int, nanos: int) -> None:
    # Duration(seconds=2**62).ToTimedelta() raised OverflowError: INTERNAL on every RPC with keep_alive.
    request = pb.ChatStreamRequest(keep_alive=Duration(seconds=seconds, nanos=nanos))
    with pytest.raises(errors.InvalidArgument, match="keep_alive"):
        convert.keep_alive(request)


def test_durations_in_range_are_seconds() -> None:
    assert convert.duration_seconds("d", Duration(seconds=315_576_000_000)) == 315_576_000_000
    assert convert.duration_seconds("d", Duration(seconds=-1, nanos=-500_000_000)) == -1.5
    assert convert.keep_alive(pb.ChatStreamRequest(keep_alive=Duration(seconds=-5))) is None


def test_expiry_past_what_a_timestamp_holds_is_left_unset() -> None:
    # A keep-alive of 10^12 s made every later GetMemoryStats fail (Timestamp out of range): INTERNAL.
    def expiring(at: float) -> t.MemorySnapshot:
        model = t.ModelMemory("m", ModelState.LOADED, 0, "", False, 0, "", None, at)
        return t.MemorySnapshot(devices=[], models=[model], budget_bytes=0, taken_at=1.7e9)

    assert not convert.memory_snapshot(expiring(1e12 + 1.7e9)).models[0].HasField("expires_at")
    stamp = convert.memory_snapshot(expiring(1.7e9)).models[0].expires_at
    assert stamp.seconds == 1_700_000_000


def _png_claiming(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose header is rewritten to claim another size (with a valid CRC)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]  # "IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _spec(image: bytes) -> image_inputs.ImageSpec:
    return image_inputs.ImageSpec("edit", "image", "p", "", {"width": 64, "height": 64}, image=image)


@pytest.mark.parametrize("size", [(100_000, 100_000), (20_000, 20_000), (5000, 4000)])
def test_images_declaring_huge_sizes_are_invalid_argument(size: tuple[int, int], tmp_path: Path) -> None:
    # Pillow's DecompressionBombError is no OSError: it answered INTERNAL; smaller "bombs" were decoded.
    settings = Settings(image_max_width=64, image_max_height=64, image_dir=tmp_path)
    with pytest.raises(errors.InvalidArgument, match="pixels"):
        image_inputs.check_edit_images(_spec(_png_claiming(*size)), settings)


def test_undecodable_images_are_invalid_argument(tmp_path: Path) -> None:
    settings = Settings(image_max_width=64, image_max_height=64, image_dir=tmp_path)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    whole = buffer.getvalue()
    for broken in (whole[:60], whole[:-20], b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"RIFF\x00\x00\x00\x00WEBPVP8 "):
        with pytest.raises(errors.InvalidArgument, match="image"):
            image_inputs.check_edit_images(_spec(broken), settings)
    image_inputs.check_edit_images(_spec(whole), settings)  # the whole picture is fine
