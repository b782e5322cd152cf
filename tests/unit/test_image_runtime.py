"""Parameters, image decoding, mask checks and PNG encoding of the image model, run without Triton."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model_runtime.images import (
    DEFAULT_STRENGTH,
    ImageLimits,
    ImageParameters,
    InvalidImageRequest,
    build_job,
    decode_image,
    decode_mask,
    encode_png,
    parse_image_parameters,
    planned_steps,
)

LIMITS = ImageLimits(
    max_width=256,
    max_height=128,
    max_steps=50,
    max_num_images=3,
    default_width=64,
    default_height=32,
    default_steps=20,
    default_guidance_scale=6.0,
)


def encoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, axis=1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


def parse(raw: dict[str, Any]) -> ImageParameters:
    return parse_image_parameters(json.dumps(raw), LIMITS)


# --- parameters -----------------------------------------------------------------------------------


def test_defaults_apply_when_absent_or_null() -> None:
    for text in (None, "", "{}", json.dumps({"steps": None, "seed": None})):
        params = parse_image_parameters(text, LIMITS)
        assert params == ImageParameters(
            width=None, height=None, steps=20, guidance_scale=6.0, seed=None, num_images=1, strength=DEFAULT_STRENGTH
        )


def test_given_values_are_kept() -> None:
    params = parse(
        {"width": 256, "height": 8, "steps": 50, "guidance_scale": 0, "seed": 2**63 - 1, "num_images": 3, "strength": 1}
    )
    assert params == ImageParameters(256, 8, 50, 0.0, 2**63 - 1, 3, 1.0)
    assert parse({"steps": 7.0}).steps == 7  # a whole float is an integer


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"width": 0}, "width"),
        ({"width": 65}, "width"),
        ({"width": 264}, "width"),  # above max_width 256
        ({"width": "64"}, "width"),
        ({"height": 136}, "height"),  # above max_height 128
        ({"height": 12}, "height"),
        ({"steps": 0}, "steps"),
        ({"steps": 51}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"guidance_scale": -0.1}, "guidance_scale"),
        ({"guidance_scale": 30.5}, "guidance_scale"),
        ({"guidance_scale": "7"}, "guidance_scale"),
        ({"guidance_scale": 1e400}, "guidance_scale"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": "1"}, "seed"),
        ({"num_images": 0}, "num_images"),
        ({"num_images": 4}, "num_images"),
        ({"strength": 0}, "strength"),
        ({"strength": 1.01}, "strength"),
        ({"strength": False}, "strength"),
        ({"cfg": 7}, "cfg"),
    ],
)
def test_each_bad_value_is_refused_naming_its_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidImageRequest, match=field):
        parse(raw)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"width"'])
def test_parameters_must_be_a_json_object(text: str) -> None:
    with pytest.raises(InvalidImageRequest, match="parameters"):
        parse_image_parameters(text, LIMITS)


def test_limits_refuse_inconsistent_defaults() -> None:
    with pytest.raises(ValueError, match="default_width"):
        ImageLimits(max_width=256, default_width=512)
    with pytest.raises(ValueError, match="default_steps"):
        ImageLimits(max_steps=10, default_steps=30)


# --- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True})])
def test_png_jpeg_and_webp_decode_to_rgb(fmt: str, options: dict[str, Any]) -> None:
    source = gradient(40, 24)
    image = decode_image(encoded(source, fmt, **options))
    assert image.mode == "RGB" and image.size == (40, 24)
    difference = np.abs(np.asarray(image, dtype=int) - np.asarray(source, dtype=int)).mean()
    assert difference < 3


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidImageRequest, match="image"):
        decode_image(data)


def test_gif_and_bmp_are_refused() -> None:
    for fmt in ("GIF", "BMP"):
        with pytest.raises(InvalidImageRequest, match="not a PNG, JPEG or WebP"):
            decode_image(encoded(gradient(16, 16), fmt))


def test_truncated_png_is_refused() -> None:
    data = encoded(gradient(64, 64))
    with pytest.raises(InvalidImageRequest, match="image"):
        decode_image(data[: len(data) // 2])


def test_huge_canvas_is_refused_before_decoding() -> None:
    data = encoded(Image.new("L", (300, 300)))
    with pytest.raises(InvalidImageRequest, match="more than 10000 pixels"):
        decode_image(data, max_pixels=10_000)


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert decode_image(encoded(rgba)).getpixel((0, 0)) == (255, 255, 255)


def test_mask_decodes_to_greyscale() -> None:
    mask = Image.new("RGB", (16, 8), (0, 0, 0))
    mask.paste((255, 255, 255), (0, 0, 8, 8))
    decoded = decode_mask(encoded(mask))
    assert decoded.mode == "L"
    assert decoded.getpixel((0, 0)) == 255 and decoded.getpixel((15, 0)) == 0


# --- whole requests -------------------------------------------------------------------------------


def test_txt2img_takes_the_default_size() -> None:
    job = build_job(b"a cat", None, None, None, None, LIMITS)
    assert (job.mode, job.width, job.height, job.steps, job.guidance_scale) == ("txt2img", 64, 32, 20, 6.0)
    assert job.prompt == "a cat" and job.negative_prompt is None and job.image is None


def test_empty_negative_prompt_means_none() -> None:
    assert build_job(b"a cat", b"", None, None, None, LIMITS).negative_prompt is None
    assert build_job(b"a cat", "blurry", None, None, None, LIMITS).negative_prompt == "blurry"


@pytest.mark.parametrize(("prompt", "message"), [(None, "prompt is required"), (b"  ", "prompt"), (b"\xff", "UTF-8")])
def test_prompt_is_required_text(prompt: bytes | None, message: str) -> None:
    with pytest.raises(InvalidImageRequest, match=message):
        build_job(prompt, None, None, None, None, LIMITS)


def test_img2img_defaults_to_the_image_size() -> None:
    job = build_job(b"x", None, encoded(gradient(48, 40)), None, None, LIMITS)
    assert (job.mode, job.width, job.height, job.strength) == ("img2img", 48, 40, DEFAULT_STRENGTH)
    assert job.image is not None and job.image.size == (48, 40)


def test_img2img_resizes_to_the_given_size() -> None:
    job = build_job(b"x", None, encoded(gradient(50, 30)), None, '{"width": 32, "height": 64}', LIMITS)
    assert job.image is not None and job.image.size == (32, 64) and (job.width, job.height) == (32, 64)


def test_image_size_not_a_multiple_of_8_needs_width_and_height() -> None:
    with pytest.raises(InvalidImageRequest, match="width is 50, not a multiple of 8"):
        build_job(b"x", None, encoded(gradient(50, 32)), None, None, LIMITS)
    with pytest.raises(InvalidImageRequest, match="height is 30, not a multiple of 8"):
        build_job(b"x", None, encoded(gradient(48, 30)), None, '{"width": 48}', LIMITS)


def test_image_above_the_maximum_needs_a_smaller_size() -> None:
    with pytest.raises(InvalidImageRequest, match="height is 136, above the maximum 128"):
        build_job(b"x", None, encoded(gradient(64, 136)), None, None, LIMITS)
    job = build_job(b"x", None, encoded(gradient(64, 136)), None, '{"height": 128}', LIMITS)
    assert job.image is not None and job.image.size == (64, 128)


def test_inpaint_with_mask() -> None:
    mask = Image.new("L", (48, 40), 0)
    mask.paste(255, (8, 8, 24, 24))
    job = build_job(b"x", None, encoded(gradient(48, 40)), encoded(mask), '{"width": 96, "height": 80}', LIMITS)
    assert job.mode == "inpaint" and job.mask is not None and job.image is not None
    assert job.mask.size == job.image.size == (96, 80)
    assert job.mask.getpixel((30, 30)) == 255 and job.mask.getpixel((90, 70)) == 0  # scaled, still binary


def test_mask_needs_an_image() -> None:
    with pytest.raises(InvalidImageRequest, match="mask requires image"):
        build_job(b"x", None, None, encoded(Image.new("L", (8, 8))), None, LIMITS)


def test_mask_must_have_the_image_size() -> None:
    with pytest.raises(InvalidImageRequest, match="mask is 32x32 but image is 48x40"):
        build_job(b"x", None, encoded(gradient(48, 40)), encoded(Image.new("L", (32, 32))), None, LIMITS)


def test_mask_garbage_is_refused_naming_mask() -> None:
    with pytest.raises(InvalidImageRequest, match="^mask"):
        build_job(b"x", None, encoded(gradient(48, 40)), b"nope", None, LIMITS)


def test_an_edit_needs_at_least_one_denoising_step() -> None:
    with pytest.raises(InvalidImageRequest, match="strength"):
        build_job(b"x", None, encoded(gradient(16, 16)), None, '{"steps": 3, "strength": 0.3}', LIMITS)
    job = build_job(b"x", None, encoded(gradient(16, 16)), None, '{"steps": 4, "strength": 0.25}', LIMITS)
    assert job.strength == 0.25


# --- output ---------------------------------------------------------------------------------------


def test_png_roundtrip_is_lossless() -> None:
    source = gradient(24, 16)
    data = encode_png(source)
    assert data.startswith(b"\x89PNG")
    back = Image.open(io.BytesIO(data))
    assert back.format == "PNG" and back.size == (24, 16)
    assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(source))


# --- step counts ----------------------------------------------------------------------------------


def test_planned_steps_follow_the_scheduler() -> None:
    from diffusers import DDIMScheduler, PNDMScheduler

    ddim: Any = DDIMScheduler()  # diffusers is untyped
    assert planned_steps(ddim, 30, None) == 30
    assert planned_steps(ddim, 4, 0.5) == 2
    assert planned_steps(ddim, 3, 0.7) == 2  # int(2.1), as diffusers' get_timesteps
    assert planned_steps(ddim, 10, 1.0) == 10
    # Stable Diffusion 1.5's own scheduler runs one step more than asked.
    pndm: Any = PNDMScheduler(skip_prk_steps=True)
    assert planned_steps(pndm, 5, None) == 6
    assert planned_steps(pndm, 5, 0.6) == 4
    assert len(ddim.timesteps) == 1000  # the pipeline's scheduler itself was not touched
