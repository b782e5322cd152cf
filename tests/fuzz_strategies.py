"""Hypothesis strategies for every request message of inference.v1, built from the protobuf
descriptors (any value of any field), plus hand-aimed values near the adapter's limits.

`messages(descriptor, overrides)` draws a message field by field: integers over the field's whole
range, 32/64-bit floats including NaN and infinities, unicode text (small, and now and then huge),
random bytes, repeated fields empty to long, oneofs, proto3 `optional` presence, nested messages and
Durations/Timestamps with any seconds and nanos (also outside the ranges protobuf documents).
`overrides` maps a field's full name to the strategy that draws it instead (model names, images).
`with_unknown_fields` appends well-formed fields the schema does not know to a serialized message.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import message as pb_message
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st
from PIL import Image

from adapter.gen.inference.v1 import inference_pb2 as pb

Strategy = st.SearchStrategy[Any]

INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

# Odd but valid text: controls, NUL, RTL marks, zero-width and combining characters, emoji, CJK.
ODD_CHARACTERS = "\x00\x01\x1b\x7f\u0085\u00a0\u200b\u200d\u202e\u2028\ufeff\ufffd\u0301\U0001f600\u4e2d\U0010ffff"


def huge_text(min_chars: int = 1_000, max_chars: int = 200_000) -> Strategy:
    """Long strings, cheap to draw (a short piece repeated)."""
    return st.builds(
        lambda piece, n: (piece * (n // max(len(piece), 1) + 1))[:n],
        st.text(min_size=1, max_size=8),
        st.integers(min_chars, max_chars),
    )


def any_text() -> Strategy:
    """Unicode text (never surrogates: a protobuf string is UTF-8), usually short."""
    return st.one_of(
        st.text(max_size=24),
        st.text(alphabet=st.sampled_from(ODD_CHARACTERS), max_size=8),
        st.sampled_from(["", " ", "\n\t ", "x"]),
        huge_text(),
    )


def any_bytes() -> Strategy:
    return st.one_of(
        st.binary(max_size=64),
        st.builds(lambda piece, n: piece * n, st.binary(min_size=1, max_size=4), st.integers(1_000, 100_000)),
    )


def scalar(field: FieldDescriptor) -> Strategy:
    kind = field.type
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        return st.integers(low, high)
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return any_text()
    if kind == FieldDescriptor.TYPE_BYTES:
        return any_bytes()
    if kind == FieldDescriptor.TYPE_ENUM:
        # Known values, and unknown ones (proto3 enums are open).
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-(2**31), 2**31 - 1))
    raise TypeError(f"no strategy for field {field.full_name} of type {kind}")


def field_values(field: FieldDescriptor, overrides: Mapping[str, Strategy]) -> Strategy:
    """One value of the field (for a repeated field: one element)."""
    if field.full_name in overrides:
        return overrides[field.full_name]
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, overrides)
    return scalar(field)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _has_presence(field: FieldDescriptor) -> bool:
    return bool(field.has_presence)


def messages(descriptor: Descriptor, overrides: Mapping[str, Strategy] | None = None) -> Strategy:
    """Any message of this type, drawn from its descriptor."""
    overrides = overrides or {}
    message_class = _message_class(descriptor)

    @st.composite
    def draw_message(draw: Callable[[Strategy], Any]) -> pb_message.Message:
        out = message_class()
        real_oneofs = [o for o in descriptor.oneofs if not o.name.startswith("_")]  # not proto3 `optional`
        chosen: set[str] = set()
        for oneof in real_oneofs:
            member = draw(st.none() | st.sampled_from([f.name for f in oneof.fields]))
            if member is not None:
                chosen.add(member)
        for field in descriptor.fields:
            in_real_oneof = field.containing_oneof is not None and field.containing_oneof in real_oneofs
            if in_real_oneof and field.name not in chosen:
                continue
            values = field_values(field, overrides)
            if _is_repeated(field):
                items = draw(st.one_of(st.lists(values, max_size=4), st.lists(values, min_size=5, max_size=40)))
                target = getattr(out, field.name)
                for item in items:
                    if field.type == FieldDescriptor.TYPE_MESSAGE:
                        target.add().CopyFrom(item)
                    else:
                        target.append(item)
                continue
            # A field with presence (message, optional scalar, oneof member) may stay unset.
            if not in_real_oneof and _has_presence(field) and not draw(st.booleans()):
                continue
            value = draw(values)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(out, field.name).CopyFrom(value)
            else:
                setattr(out, field.name, value)
        return out

    return draw_message()


def _message_class(descriptor: Descriptor) -> type[pb_message.Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


# ---- unknown fields ----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@st.composite
def unknown_fields(draw: Callable[[Strategy], Any]) -> bytes:
    """Well-formed fields with numbers no inference.v1 message uses (a newer client's fields)."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        number = draw(st.integers(100, 2**29 - 1))
        wire = draw(st.sampled_from([0, 1, 2, 5]))
        out += _varint(number << 3 | wire)
        if wire == 0:
            out += _varint(draw(st.integers(0, 2**64 - 1)))
        elif wire == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        else:
            payload = draw(st.binary(max_size=32))
            out += _varint(len(payload)) + payload
    return out


def serialized(requests: Strategy) -> Strategy:
    """A message's bytes, half the time with unknown fields appended."""
    return st.builds(
        lambda message, extra: message.SerializeToString() + (extra or b""),
        requests,
        st.none() | unknown_fields(),
    )


# ---- hand-aimed values -------------------------------------------------------------------------

UNKNOWN_MODELS = ["", " ", "no-such-model", "LLM", "llm ", "../llm", "llm/1", "*", "%s", "\x00", "\u202ellm"]


def model_names(real: list[str], real_weight: int = 1, unknown_weight: int = 1) -> Strategy:
    """The models served (real) or not (unknown, odd, huge), in the given proportion."""
    real_names = st.sampled_from(real)
    unknown = st.one_of(st.sampled_from(UNKNOWN_MODELS), any_text())
    return st.integers(0, real_weight + unknown_weight - 1).flatmap(
        lambda i: real_names if i < real_weight else unknown
    )


def durations(near: list[int] | None = None) -> Strategy:
    """Durations: any seconds/nanos (also out of protobuf's documented range), and useful ones."""
    from google.protobuf.duration_pb2 import Duration

    seconds = st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([0, 1, -1, 315_576_000_000, 315_576_000_001, -315_576_000_001, *(near or [])]),
    )
    nanos = st.one_of(st.just(0), st.integers(-(2**31), 2**31 - 1), st.sampled_from([999_999_999, -999_999_999]))
    return st.builds(lambda s, n: Duration(seconds=s, nanos=n), seconds, nanos)


def png(width: int, height: int, mode: str = "RGB", kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color=0 if mode in ("L", "1") else (10, 200, 30)[: len(mode)]).save(
        buffer, format=kind
    )
    return buffer.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size and whose pixel data is missing (a "bomb")."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


@st.composite
def picture_bytes(draw: Callable[[Strategy], Any]) -> bytes:
    """Input images: small valid ones (sizes on and off the multiple of 8), other formats, broken,
    truncated and bomb-like ones, random bytes."""
    choice = draw(st.integers(0, 7))
    if choice <= 2:
        side = st.sampled_from([8, 16, 32, 64, 1, 7, 63, 65, 72])
        mode = draw(st.sampled_from(["RGB", "RGBA", "L", "1", "P"]))
        kind = draw(st.sampled_from(["PNG", "PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]))
        if kind == "JPEG" and mode in ("RGBA", "P"):
            mode = "RGB"
        return png(draw(side), draw(side), mode, kind)
    if choice == 3:
        whole = png(draw(st.sampled_from([8, 32, 64])), draw(st.sampled_from([8, 32, 64])))
        return whole[: draw(st.integers(0, len(whole) - 1))]
    if choice == 4:
        whole = bytearray(png(32, 32))
        for _ in range(draw(st.integers(1, 8))):
            whole[draw(st.integers(0, len(whole) - 1))] = draw(st.integers(0, 255))
        return bytes(whole)
    if choice == 5:
        return _png_header_claiming(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)))
    return bytes(draw(any_bytes()))


def is_finite(value: float) -> bool:
    return math.isfinite(value)


# ---- per request type -------------------------------------------------------------------------

# real text models -> most tokens a valid request asks (vllm_dialect: a vLLM-backend model, its chats
# rendered by the adapter with a chat template)
TEXT_MODELS = {"llm": 3, "chunk_counter": 64, "vllm_dialect": 8}


def cap_text_request(request: Any) -> Any:
    """Keeps a request to a real model cheap: a valid max_tokens (or none) becomes a small one.
    Out-of-range values are left alone: the adapter must refuse them."""
    cap = TEXT_MODELS.get(request.model)
    if cap is not None:
        options = request.options
        if not options.HasField("max_tokens"):
            options.max_tokens = cap
        elif 0 < options.max_tokens <= 100_000:
            options.max_tokens = min(options.max_tokens, cap)
    return request


def text_overrides(model_field: str) -> dict[str, Strategy]:
    return {
        model_field: model_names(list(TEXT_MODELS) + ["embedding", "image"], real_weight=3, unknown_weight=1),
        "inference.v1.ChatMessage.role": st.one_of(st.sampled_from(["system", "user", "assistant"]), any_text()),
        "inference.v1.GenerationOptions.max_tokens": st.one_of(
            st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 2, 4096, 4097, 100_000, 100_001])
        ),
        "inference.v1.GenerationOptions.temperature": st.one_of(st.floats(width=32), st.sampled_from([0.0, -0.0, 2.0])),
        "inference.v1.GenerationOptions.top_p": st.one_of(
            st.floats(width=32), st.sampled_from([0.0, 1.0, 1.0000001, 1e-45])
        ),
        "inference.v1.GenerationOptions.frequency_penalty": st.one_of(
            st.floats(width=32), st.sampled_from([-2.0, 2.0, 2.0000002])
        ),
        "inference.v1.GenerationOptions.seed": st.one_of(
            st.integers(0, 2**64 - 1), st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 1])
        ),
        "inference.v1.ChatStreamRequest.keep_alive": durations(),
        "inference.v1.GenerateStreamRequest.keep_alive": durations(),
    }


def chat_requests() -> Strategy:
    overrides = text_overrides("inference.v1.ChatStreamRequest.model")
    return messages(pb.ChatStreamRequest.DESCRIPTOR, overrides).map(cap_text_request)


def generate_requests() -> Strategy:
    overrides = text_overrides("inference.v1.GenerateStreamRequest.model")
    return messages(pb.GenerateStreamRequest.DESCRIPTOR, overrides).map(cap_text_request)


def embedding_requests(max_inputs: int, max_total_chars: int) -> Strategy:
    @st.composite
    def near_limits(draw: Callable[[Strategy], Any]) -> pb.GetEmbeddingRequest:
        """Up to one input more than EMBEDDING_MAX_INPUTS, one character either side of the total."""
        count = draw(st.integers(1, max_inputs + 1))
        total = max(count, max_total_chars + draw(st.sampled_from([-1, 0, 1])))
        inputs = ["w" * (total // count)] * count
        inputs[0] += "w" * (total - sum(map(len, inputs)))
        return pb.GetEmbeddingRequest(model="embedding", inputs=inputs, normalize=draw(st.booleans()))

    overrides = {
        "inference.v1.GetEmbeddingRequest.model": model_names(
            ["embedding", "llm", "chunk_counter", "image"], real_weight=3, unknown_weight=1
        ),
        "inference.v1.GetEmbeddingRequest.keep_alive": durations(),
    }
    return st.one_of(messages(pb.GetEmbeddingRequest.DESCRIPTOR, overrides), near_limits())


IMAGE_MODELS = ["image", "chunk_counter", "llm", "embedding"]


def _cap_image_options(options: Any) -> None:
    """0 takes the model's default (512x512, 30 steps): too slow for a fuzz run; ask for little."""
    if options.width == 0:
        options.width = 32
    if options.height == 0:
        options.height = 32
    if options.steps == 0:
        options.steps = 1
    if options.num_images == 0:
        options.num_images = 1


def cap_image_request(request: Any) -> Any:
    if request.model == "image":
        _cap_image_options(request.options)
    return request


def image_overrides(request: str) -> dict[str, Strategy]:
    dims = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 8, 7, 64, 72, -8]))
    return {
        f"inference.v1.{request}.model": model_names(IMAGE_MODELS, real_weight=3, unknown_weight=1),
        f"inference.v1.{request}.keep_alive": durations(),
        "inference.v1.ImageOptions.width": dims,
        "inference.v1.ImageOptions.height": dims,
        "inference.v1.ImageOptions.steps": st.one_of(
            st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 2, 3, -1])
        ),
        "inference.v1.ImageOptions.num_images": st.one_of(
            st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 2, 3])
        ),
        "inference.v1.ImageOptions.guidance_scale": st.one_of(st.floats(width=32), st.sampled_from([0.0, 30.0, 30.1])),
        "inference.v1.ImageOptions.seed": st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([2**63 - 1, 2**63])),
        "inference.v1.EditImageRequest.image": picture_bytes(),
        "inference.v1.EditImageRequest.mask": st.one_of(st.just(b""), picture_bytes()),
        "inference.v1.EditImageRequest.strength": st.one_of(st.floats(width=32), st.sampled_from([0.0, 1.0, 1e-45])),
    }


def generate_image_requests() -> Strategy:
    overrides = image_overrides("GenerateImageRequest")
    return messages(pb.GenerateImageRequest.DESCRIPTOR, overrides).map(cap_image_request)


def edit_image_requests() -> Strategy:
    overrides = image_overrides("EditImageRequest")
    return messages(pb.EditImageRequest.DESCRIPTOR, overrides).map(cap_image_request)


def check_status_requests(known_job_ids: list[str]) -> Strategy:
    """Job ids: ones the fuzz run created (queued, running, done, failed) and made-up ones."""
    known = st.integers(0, 2**16).map(lambda i: known_job_ids[i % len(known_job_ids)] if known_job_ids else "")
    made_up = st.one_of(any_text(), st.sampled_from(["0" * 32, "f" * 32, "' OR 1=1 --", "%", "_", "../jobs.sqlite3"]))
    return st.builds(lambda job_id: pb.CheckImageStatusRequest(job_id=job_id), st.one_of(known, made_up))


def manage_vram_commands(real: list[str], real_weight: int, unknown_weight: int) -> Strategy:
    """Lists of commands (any command, any fields; 0 to many)."""
    names = model_names(real, real_weight, unknown_weight)
    overrides = {
        f"inference.v1.{kind}.model": names for kind in ("LoadModelCommand", "PinModelCommand", "UnpinModelCommand")
    }
    # A reload costs seconds, and later examples need the served models: unload commands name
    # models that are not served (ClearMemory's fuzzing, last, unloads served ones).
    overrides["inference.v1.UnloadModelCommand.model"] = model_names(["no-such-model"], 1, 3)
    overrides["inference.v1.SetKeepAliveCommand.model"] = names
    overrides["inference.v1.SetKeepAliveCommand.keep_alive"] = durations()
    overrides["inference.v1.SubscribeCommand.snapshot_interval"] = durations(near=[0, 1])
    command = messages(pb.ManageVRAMRequest.DESCRIPTOR, overrides)
    return st.one_of(st.lists(command, max_size=4), st.lists(command, min_size=5, max_size=24))


def clear_memory_requests() -> Strategy:
    overrides = {"inference.v1.ClearMemoryRequest.wait_for_idle": durations(near=[1, 2])}
    return messages(pb.ClearMemoryRequest.DESCRIPTOR, overrides)


def memory_stats_requests() -> Strategy:
    return messages(pb.GetMemoryStatsRequest.DESCRIPTOR)
