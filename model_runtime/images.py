"""Request parsing and validation, image decoding and PNG encoding for the image model, free of Triton.

Every refusal is an `InvalidImageRequest` whose message names the field at fault; the model turns it
into an INVALID_ARG error.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from model_runtime.json_values import finite_number

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
PARAMETER_KEYS = ("width", "height", "steps", "guidance_scale", "seed", "num_images", "strength")
MAX_GUIDANCE_SCALE = 30.0
DEFAULT_STRENGTH = 0.8
MAX_SEED = 2**63
SIZE_MULTIPLE = 8
# The VAE decode at the end of a Stable Diffusion call is its memory peak, growing with pixels x
# images: SD 1.5 at 1024x1024 with 4 images wants well over 20 GB in fp16 decoded in one go, which
# fails on 24 GB GPUs (and leaves nothing to the other models). Slicing decodes the images one at a
# time (same output, a little slower); tiling decodes overlapping tiles (peak independent of the
# size; seams are blended but the output differs slightly), so it is used only above this size.
DEFAULT_VAE_TILING_ABOVE_PIXELS = 768 * 768
# Images are resized to at most max_width x max_height anyway; refuse to even decode anything huge
# (a small PNG can claim a giant canvas).
DEFAULT_MAX_INPUT_PIXELS = 64 * 1024 * 1024


class InvalidImageRequest(ValueError):
    """A request the image model refuses; the message names the field (becomes INVALID_ARG)."""


@dataclass(frozen=True)
class ImageLimits:
    """Limits and defaults from the model's config.pbtxt parameters."""

    max_width: int = 1024
    max_height: int = 1024
    max_steps: int = 150
    max_num_images: int = 4
    default_width: int = 512
    default_height: int = 512
    default_steps: int = 30
    default_guidance_scale: float = 7.5
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_width", "max_height", "max_steps", "max_num_images", "max_input_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, limit in (("default_width", self.max_width), ("default_height", self.max_height)):
            value = getattr(self, name)
            if value % SIZE_MULTIPLE or not SIZE_MULTIPLE <= value <= limit:
                raise ValueError(f"{name} must be a multiple of {SIZE_MULTIPLE} in [{SIZE_MULTIPLE}, {limit}]")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError(f"default_steps must be in [1, max_steps={self.max_steps}]")
        if not 0 <= self.default_guidance_scale <= MAX_GUIDANCE_SCALE:
            raise ValueError(f"default_guidance_scale must be in [0, {MAX_GUIDANCE_SCALE:g}]")


@dataclass(frozen=True)
class ImageParameters:
    """The request's `parameters` JSON after range checks; width/height None when not given."""

    width: int | None
    height: int | None
    steps: int
    guidance_scale: float
    seed: int | None
    num_images: int
    strength: float


@dataclass(frozen=True)
class ImageJob:
    """Everything a pipeline call needs, validated. mode: txt2img, img2img or inpaint."""

    mode: str
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int | None
    num_images: int
    strength: float
    image: Image.Image | None = None  # RGB, already width x height
    mask: Image.Image | None = None  # L (white = repaint), already width x height


def _integer(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    # bool is an int in Python; "steps": true is a client bug, not 1. 30.0 is accepted as 30.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidImageRequest(f"parameter {key!r} must be an integer, got {value!r}")
    return value


def _number(raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    return None if value is None else finite_number(value, f"parameter {key!r}", InvalidImageRequest)


def _check_size(key: str, value: int, limit: int) -> int:
    if value % SIZE_MULTIPLE or not SIZE_MULTIPLE <= value <= limit:
        raise InvalidImageRequest(
            f"{key} must be a multiple of {SIZE_MULTIPLE} in [{SIZE_MULTIPLE}, {limit}], got {value}"
        )
    return value


def parse_image_parameters(text: str | None, limits: ImageLimits) -> ImageParameters:
    """Parses and range-checks the `parameters` JSON object; absent or null keys take the defaults."""
    raw: dict[str, Any] = {}
    if text:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidImageRequest(f"parameters is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise InvalidImageRequest("parameters must be a JSON object")
    unknown = sorted(set(raw) - set(PARAMETER_KEYS))
    if unknown:
        raise InvalidImageRequest(f"unknown parameter(s) {unknown}; known: {sorted(PARAMETER_KEYS)}")

    width = _integer(raw, "width")
    if width is not None:
        _check_size("width", width, limits.max_width)
    height = _integer(raw, "height")
    if height is not None:
        _check_size("height", height, limits.max_height)
    steps = _integer(raw, "steps")
    steps = limits.default_steps if steps is None else steps
    if not 1 <= steps <= limits.max_steps:
        raise InvalidImageRequest(f"steps must be in [1, {limits.max_steps}], got {steps}")
    guidance = _number(raw, "guidance_scale")
    guidance = limits.default_guidance_scale if guidance is None else guidance
    if not 0 <= guidance <= MAX_GUIDANCE_SCALE:
        raise InvalidImageRequest(f"guidance_scale must be in [0, {MAX_GUIDANCE_SCALE:g}], got {guidance}")
    seed = _integer(raw, "seed")
    if seed is not None and not 0 <= seed < MAX_SEED:
        raise InvalidImageRequest(f"seed must be in [0, 2^63), got {seed}")
    num_images = _integer(raw, "num_images")
    num_images = 1 if num_images is None else num_images
    if not 1 <= num_images <= limits.max_num_images:
        raise InvalidImageRequest(f"num_images must be in [1, {limits.max_num_images}], got {num_images}")
    strength = _number(raw, "strength")
    strength = DEFAULT_STRENGTH if strength is None else strength
    if not 0 < strength <= 1:
        raise InvalidImageRequest(f"strength must be in (0, 1], got {strength}")
    return ImageParameters(width, height, steps, guidance, seed, num_images, strength)


def _open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decodes PNG/JPEG/WebP bytes fully, with EXIF orientation applied; anything else is refused."""
    if not data:
        raise InvalidImageRequest(f"{field} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImageRequest(
                    f"{field} is {width}x{height}: more than {max_pixels} pixels, refused before decoding"
                )
            image.load()
            return ImageOps.exif_transpose(image)
    except InvalidImageRequest:
        raise
    except UnidentifiedImageError:
        raise InvalidImageRequest(f"{field} is not a PNG, JPEG or WebP image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImageRequest(f"{field} is too large to decode") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        # Truncated or corrupt data after a valid header.
        raise InvalidImageRequest(f"{field} could not be decoded: {err}") from None


def decode_image(data: bytes, field: str = "image", max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> Image.Image:
    """An RGB image from encoded PNG/JPEG/WebP bytes (transparency is composited onto white)."""
    image = _open_image(data, field, max_pixels)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_mask(data: bytes, field: str = "mask", max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> Image.Image:
    """A greyscale (L) mask from encoded PNG/JPEG/WebP bytes: white = repaint, black = keep."""
    image = _open_image(data, field, max_pixels)
    if image.mode in ("RGBA", "LA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))  # transparent = keep
        image = Image.alpha_composite(background, image)
    return image.convert("L")


def _edit_size(params: ImageParameters, image: Image.Image, limits: ImageLimits) -> tuple[int, int]:
    """The output size of an edit: the given width/height, else the input image's own size."""
    sizes = []
    for key, given, own, limit in (
        ("width", params.width, image.width, limits.max_width),
        ("height", params.height, image.height, limits.max_height),
    ):
        if given is not None:
            sizes.append(given)
            continue
        if own % SIZE_MULTIPLE:
            raise InvalidImageRequest(
                f"image {key} is {own}, not a multiple of {SIZE_MULTIPLE}: resize the image or give {key} "
                f"(the image is then resized to it)"
            )
        if own > limit:
            raise InvalidImageRequest(f"image {key} is {own}, above the maximum {limit}: give a smaller {key}")
        sizes.append(own)
    return sizes[0], sizes[1]


def build_job(
    prompt: bytes | str | None,
    negative_prompt: bytes | str | None,
    image: bytes | None,
    mask: bytes | None,
    parameters: bytes | str | None,
    limits: ImageLimits,
) -> ImageJob:
    """Validates a whole request: which mode, the sizes, the decoded (and resized) image and mask."""
    prompt_text = _text(prompt, "prompt")
    if prompt_text is None:
        raise InvalidImageRequest("prompt is required")
    if not prompt_text.strip():
        raise InvalidImageRequest("prompt must not be empty")
    negative_text = _text(negative_prompt, "negative_prompt") or None
    params = parse_image_parameters(_text(parameters, "parameters"), limits)
    if mask is not None and image is None:
        raise InvalidImageRequest("mask requires image (inpainting repaints the white part of the mask in image)")

    def job(
        mode: str, width: int, height: int, source: Image.Image | None = None, mask: Image.Image | None = None
    ) -> ImageJob:
        return ImageJob(
            mode=mode,
            prompt=prompt_text,
            negative_prompt=negative_text,
            width=width,
            height=height,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            seed=params.seed,
            num_images=params.num_images,
            strength=params.strength,
            image=source,
            mask=mask,
        )

    if image is None:
        width = params.width if params.width is not None else limits.default_width
        height = params.height if params.height is not None else limits.default_height
        _check_size("width", width, limits.max_width)
        _check_size("height", height, limits.max_height)
        return job("txt2img", width, height)

    source = decode_image(image, "image", limits.max_input_pixels)
    mask_image = None
    if mask is not None:
        mask_image = decode_mask(mask, "mask", limits.max_input_pixels)
        if mask_image.size != source.size:
            raise InvalidImageRequest(
                f"mask is {mask_image.width}x{mask_image.height} but image is {source.width}x{source.height}: "
                "they must have the same size"
            )
    width, height = _edit_size(params, source, limits)
    if int(params.steps * params.strength) < 1:
        raise InvalidImageRequest(
            f"steps * strength must be >= 1 denoising step, got steps {params.steps} * strength {params.strength}"
        )
    if source.size != (width, height):
        source = source.resize((width, height), Image.Resampling.LANCZOS)
        if mask_image is not None:
            mask_image = mask_image.resize((width, height), Image.Resampling.NEAREST)
    return job("inpaint" if mask_image is not None else "img2img", width, height, source, mask_image)


def _text(value: bytes | str | None, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidImageRequest(f"{field} is not valid UTF-8") from None


def planned_steps(scheduler: Any, steps: int, strength: float | None) -> int:
    """How many denoising steps (and step callbacks) a Stable Diffusion pipeline will run: the length
    of its timesteps, computed as diffusers does (some schedulers add a step: PNDM runs steps + 1; an
    edit keeps the last min(int(steps * strength), steps) * order of them). strength None: txt2img."""
    fresh = type(scheduler).from_config(scheduler.config)  # never touch the pipeline's own scheduler
    fresh.set_timesteps(steps)
    total = len(fresh.timesteps)
    if strength is None:
        return total
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    return max(total - t_start * int(getattr(fresh, "order", 1)), 0)


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of a PIL image (lossless; compress_level 1: fast, images are large already)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass(frozen=True)
class VaeMemoryPlan:
    """How the VAE decodes one call: one image at a time (slicing), in tiles (tiling)."""

    slicing: bool
    tiling: bool


def vae_memory_plan(
    width: int, height: int, num_images: int, tiling_above_pixels: int = DEFAULT_VAE_TILING_ABOVE_PIXELS
) -> VaeMemoryPlan:
    """Slicing whenever a call makes several images; tiling above tiling_above_pixels per image
    (0: never tile)."""
    tiling = tiling_above_pixels > 0 and width * height > tiling_above_pixels
    return VaeMemoryPlan(slicing=num_images > 1, tiling=tiling)


def apply_vae_plan(vae: Any, plan: VaeMemoryPlan) -> None:
    """Sets the plan on a diffusers AutoencoderKL (shared by the txt2img/img2img/inpaint pipelines;
    one call runs at a time, so the setting holds for exactly that call)."""
    vae.enable_slicing() if plan.slicing else vae.disable_slicing()
    vae.enable_tiling() if plan.tiling else vae.disable_tiling()
