"""Checks of image-job requests: fields against the configured limits, and the input image and
mask decoded for real. Decoding is CPU work: callers run `check_edit_images` in a thread."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

from adapter.config import Settings
from adapter.core import types as t
from adapter.core import validation
from adapter.core.errors import InvalidArgument

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_SEED = 2**63
MAX_GUIDANCE = 30.0


@dataclass(frozen=True)
class ImageSpec:
    """A validated job: what the image model is asked to do."""

    kind: str  # "generate" or "edit"
    model: str
    prompt: str
    negative_prompt: str
    parameters: dict[str, Any]  # the model's `parameters` JSON; unset options are left out
    image: bytes = b""
    mask: bytes = b""
    keep_alive: t.KeepAlive = "default"
    request_id: str = ""  # the client's idempotency key; "" when it sent none


MAX_REQUEST_ID_CHARS = 128


def _request_id(value: str) -> str:
    if len(value) > MAX_REQUEST_ID_CHARS or not value.isprintable():
        raise InvalidArgument(
            f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable characters (a UUID, for example); "
            f"got {len(value)} characters"
        )
    return value


def fingerprint(spec: ImageSpec) -> str:
    """A digest of everything the job was asked to do, to tell a retry from a different request that
    reuses its request_id. Hashes the pictures: callers run it off the event loop for edits."""
    digest = hashlib.sha256()
    described = {
        "kind": spec.kind,
        "model": spec.model,
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "parameters": spec.parameters,
        "keep_alive": spec.keep_alive,
        "image": hashlib.sha256(spec.image).hexdigest(),
        "mask": hashlib.sha256(spec.mask).hexdigest(),
    }
    digest.update(json.dumps(described, sort_keys=True).encode())
    return digest.hexdigest()


def _dimension(name: str, value: int, limit: int) -> None:
    if value < 0 or value % 8 or value > limit:
        raise InvalidArgument(
            f"options.{name} must be a multiple of 8 between 8 and {limit} (0 = model default); got {value}"
        )


def check_options(options: t.ImageOptions, settings: Settings) -> dict[str, Any]:
    """The shared options as model parameters; raises InvalidArgument naming the field."""
    parameters: dict[str, Any] = {}
    _dimension("width", options.width, settings.image_max_width)
    _dimension("height", options.height, settings.image_max_height)
    if options.width:
        parameters["width"] = options.width
    if options.height:
        parameters["height"] = options.height
    if options.steps:
        if not 0 < options.steps <= settings.image_max_steps:
            raise InvalidArgument(f"options.steps must be in [1, {settings.image_max_steps}]; got {options.steps}")
        parameters["steps"] = options.steps
    if options.guidance_scale is not None:
        g = options.guidance_scale
        if not math.isfinite(g) or not 0 <= g <= MAX_GUIDANCE:
            raise InvalidArgument(f"options.guidance_scale must be in [0, {MAX_GUIDANCE:g}]; got {g:g}")
        parameters["guidance_scale"] = g
    if options.seed is not None:
        if options.seed >= MAX_SEED:
            raise InvalidArgument(f"options.seed must be below 2^63; got {options.seed}")
        parameters["seed"] = options.seed
    if options.num_images:
        if not 0 < options.num_images <= settings.image_max_num_images:
            raise InvalidArgument(
                f"options.num_images must be in [1, {settings.image_max_num_images}]; got {options.num_images}"
            )
        parameters["num_images"] = options.num_images
    return parameters


def _prompt(prompt: str) -> str:
    if not prompt.strip():
        raise InvalidArgument("prompt must not be empty")
    return prompt


def check_generate(request: t.GenerateImageRequest, settings: Settings) -> ImageSpec:
    return ImageSpec(
        kind="generate",
        model=validation.require_model(request.model, "image"),
        prompt=_prompt(request.prompt),
        negative_prompt=request.options.negative_prompt,
        parameters=check_options(request.options, settings),
        keep_alive=request.keep_alive,
        request_id=_request_id(request.request_id),
    )


def check_edit_fields(request: t.EditImageRequest, settings: Settings) -> ImageSpec:
    """Everything but decoding the pictures (cheap, on the event loop)."""
    model = validation.require_model(request.model, "image")
    parameters = check_options(request.options, settings)
    if request.strength is not None:
        # 0 would run no denoising step at all: the model refuses it, so say so now.
        if not math.isfinite(request.strength) or not 0 < request.strength <= 1:
            raise InvalidArgument(f"strength must be in (0, 1]; got {request.strength:g}")
        parameters["strength"] = request.strength
    if not request.image:
        raise InvalidArgument("image is required: PNG, JPEG or WebP bytes")
    for name, data in (("image", request.image), ("mask", request.mask)):
        if len(data) > settings.image_max_input_bytes:
            raise InvalidArgument(
                f"{name} is {len(data)} bytes; the limit is {settings.image_max_input_bytes} (IMAGE_MAX_INPUT_BYTES)"
            )
    return ImageSpec(
        kind="edit",
        model=model,
        prompt=_prompt(request.prompt),
        negative_prompt=request.options.negative_prompt,
        parameters=parameters,
        image=request.image,
        mask=request.mask,
        keep_alive=request.keep_alive,
        request_id=_request_id(request.request_id),
    )


# An input may be larger than the output (the model resizes it), up to this many times its area:
# past that, decoding it would only cost memory (a small file can declare a huge picture).
MAX_INPUT_AREA_FACTOR = 16


def _decode(name: str, data: bytes, max_pixels: int) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as picture:
            kind = picture.format
            if kind not in ACCEPTED_FORMATS:
                raise InvalidArgument(f"{name} must be PNG, JPEG or WebP; got {kind or 'an unknown format'}")
            width, height = picture.size
            if width * height > max_pixels:
                raise InvalidArgument(
                    f"{name} is {width}x{height}: more than {max_pixels} pixels ({MAX_INPUT_AREA_FACTOR} times "
                    "IMAGE_MAX_WIDTH x IMAGE_MAX_HEIGHT); scale it down first"
                )
            picture.load()  # decode it all: a truncated file fails here, not in the model
            return picture.size
    except Image.DecompressionBombError:
        raise InvalidArgument(
            f"{name} declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels: refused as a decompression bomb"
        ) from None
    except InvalidArgument:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to decode untrusted bytes is a bad image
        # Pillow's decoders raise more than OSError on crafted files (EOFError, struct.error,
        # IndexError, ...), and MemoryError on absurd sizes: all mean "not a usable image".
        raise InvalidArgument(
            f"{name} is not a readable PNG, JPEG or WebP image ({type(err).__name__}: {_without_reprs(err)})"
        ) from None


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _without_reprs(err: Exception) -> str:
    """The error's text without the reprs of our own objects (Pillow quotes "<_io.BytesIO object at
    0x...>"), which mean nothing to a client."""
    return _OBJECT_REPR.sub("", str(err)).strip() or "no details"


def check_edit_images(spec: ImageSpec, settings: Settings) -> None:
    """Decodes image and mask; checks sizes. Runs in a worker thread."""
    max_pixels = MAX_INPUT_AREA_FACTOR * settings.image_max_width * settings.image_max_height
    width, height = _decode("image", spec.image, max_pixels)
    target_w = spec.parameters.get("width", width)
    target_h = spec.parameters.get("height", height)
    if "width" not in spec.parameters or "height" not in spec.parameters:
        if target_w % 8 or target_h % 8 or target_w > settings.image_max_width or target_h > settings.image_max_height:
            raise InvalidArgument(
                f"image is {width}x{height}: without options.width/height the output takes the input's size, "
                f"which must be multiples of 8 up to {settings.image_max_width}x{settings.image_max_height}; "
                "set options.width and options.height to resize"
            )
    if spec.mask:
        mask_size = _decode("mask", spec.mask, max_pixels)
        if mask_size != (width, height):
            raise InvalidArgument(
                f"mask is {mask_size[0]}x{mask_size[1]} but image is {width}x{height}; they must match"
            )


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG the model returned (header only)."""
    with Image.open(io.BytesIO(data)) as picture:
        return picture.size
