"""Triton python-backend model: Stable Diffusion text-to-image, image-to-image and inpainting.

One set of weights: the img2img and inpaint pipelines are built from the txt2img pipeline's
components. Pipelines are not thread-safe (the scheduler keeps state), so one worker thread runs one
pipeline call at a time and further requests wait their turn.

Every pb_utils call (send, is_cancelled, metrics) happens on the stub's asyncio loop, never from the
worker threads: Triton 2.51 crashes when several threads of one stub call pb_utils at once. The
worker hands each finished denoising step to the loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline

from model_runtime.images import (
    DEFAULT_VAE_TILING_ABOVE_PIXELS,
    ImageJob,
    ImageLimits,
    InvalidImageRequest,
    apply_vae_plan,
    build_job,
    encode_png,
    planned_steps,
    vae_memory_plan,
)
from model_runtime.metrics import ModelMetrics
from model_runtime.model_config import ModelParameters, preferred_dtype, require_cuda_if_expected, triton_device
from model_runtime.triton_inputs import bytes_input, watch_cancellation

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
DEFAULT_MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
OUTCOMES = ("succeeded", "cancelled", "error", "invalid")
INPUTS = ("prompt", "negative_prompt", "image", "mask", "parameters")  # build_job's arguments, in order


def _float_parameter(params: ModelParameters, key: str, default: float) -> float:
    text = params.string(key, str(default))
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"model parameter {key!r} must be a number, got {text!r}") from None


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        require_cuda_if_expected()  # the GPU image must not fall back to the CPU silently
        params = ModelParameters(args["model_config"])
        self.model_name = args["model_name"]
        model_id = params.string("model_id", DEFAULT_MODEL_ID, env="IMAGE_MODEL_ID")
        self.limits = ImageLimits(
            max_width=params.integer("max_width", 1024, minimum=8),
            max_height=params.integer("max_height", 1024, minimum=8),
            max_steps=params.integer("max_steps", 150, minimum=1),
            max_num_images=params.integer("max_num_images", 4, minimum=1),
            default_width=params.integer("default_width", 512, minimum=8),
            default_height=params.integer("default_height", 512, minimum=8),
            default_steps=params.integer("default_steps", 30, minimum=1),
            default_guidance_scale=_float_parameter(params, "default_guidance_scale", 7.5),
        )
        self.vae_tiling_above_pixels = params.integer(
            "vae_tiling_above_pixels", DEFAULT_VAE_TILING_ABOVE_PIXELS, minimum=0
        )
        # The GPU Triton assigned to this instance (KIND_GPU), else cuda (KIND_MODEL), else CPU.
        self.device = triton_device(args)
        # float16 on every GPU: SD 1.5 is published with fp16 weights and runs well in them.
        dtype = preferred_dtype(self.device, bf16=False)
        started = time.monotonic()
        # No safety checker: the contract has no NSFW flag to report, and it would double the load.
        self.txt2img = StableDiffusionPipeline.from_pretrained(
            model_id, dtype=dtype, safety_checker=None, requires_safety_checker=False
        ).to(self.device)
        components = {**self.txt2img.components, "requires_safety_checker": False}
        self.img2img = StableDiffusionImg2ImgPipeline(**components)
        self.inpaint = StableDiffusionInpaintPipeline(**components)
        for pipe in (self.txt2img, self.img2img, self.inpaint):
            pipe.set_progress_bar_config(disable=True)
        # One pipeline call at a time (shared scheduler state); decoding of inputs in its own thread.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffuse")
        self.prepare_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        self._define_metrics()
        self.metrics.publish_memory()
        pb_utils.Logger.log_info(
            f"image model {model_id!r} loaded on {self.device} ({dtype}) in {time.monotonic() - started:.1f}s"
        )

    def _define_metrics(self) -> None:
        self.metrics = ModelMetrics(pb_utils, self.model_name, self.device)
        self.jobs = {
            outcome: self.metrics.counter("image_jobs_total", "Image requests finished, by outcome", outcome=outcome)
            for outcome in OUTCOMES
        }

    async def execute(self, requests: list[Any]) -> None:
        # Decoupled + async execute: the stub keeps taking requests while these run.
        await asyncio.gather(*(self._serve(request) for request in requests))

    async def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        loop = asyncio.get_running_loop()
        inputs = [bytes_input(pb_utils, request, name) for name in INPUTS]
        try:
            # Image decoding and resizing off the loop: it may take tens of milliseconds.
            job, total = await loop.run_in_executor(self.prepare_executor, self._prepare, *inputs)
        except InvalidImageRequest as err:
            self.jobs["invalid"].increment(1)
            error = pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        except Exception as err:  # noqa: BLE001 - any failure must still end the request
            self._fail(sender, f"preparing the request failed: {type(err).__name__}: {err}")
            return
        try:
            outcome, response = await self._run(request, sender, job, total)
        except Exception as err:  # noqa: BLE001
            self._fail(sender, f"image generation failed: {type(err).__name__}: {err}")
            return
        # Counted before the send: whoever sees the final response also sees it in the metrics.
        self.jobs[outcome].increment(1)
        self.metrics.publish_memory()
        try:
            sender.send(response, flags=FINAL)
        except Exception as err:  # noqa: BLE001
            error = pb_utils.TritonError(
                f"sending the images failed: {type(err).__name__}: {err}", pb_utils.TritonError.INTERNAL
            )
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)

    def _fail(self, sender: Any, message: str) -> None:
        self.jobs["error"].increment(1)
        error = pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
        sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)

    def _prepare(self, *inputs: bytes | None) -> tuple[ImageJob, int]:
        """Runs in the prepare thread; touches no pb_utils."""
        job = build_job(*inputs, limits=self.limits)
        strength = None if job.mode == "txt2img" else job.strength
        return job, planned_steps(self.txt2img.scheduler, job.steps, strength)

    async def _run(self, request: Any, sender: Any, job: ImageJob, total: int) -> tuple[str, Any]:
        """Runs the job, sending a progress response per step; returns (outcome, final response)."""
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        stop_event = threading.Event()  # asks the worker to interrupt the pipeline at its next step
        cancelled = asyncio.Event()

        def report(step: int, steps: int) -> None:  # called in the worker thread
            loop.call_soon_threadsafe(progress.put_nowait, (step, steps))

        def on_cancel() -> None:  # called on the loop
            cancelled.set()
            stop_event.set()

        generation = loop.run_in_executor(self.executor, self._generate, job, report, stop_event)
        # Triton's cancel flag, read on the loop while the job waits its turn or runs.
        watcher = loop.create_task(watch_cancellation(request, generation, on_cancel))
        step = 0
        try:
            while True:
                getter = loop.create_task(progress.get())
                await asyncio.wait({getter, generation}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                step, total = getter.result()
                if not cancelled.is_set():
                    sender.send(self._response(step, total))
            # The worker queued its last steps before it returned: they are in the queue already.
            while not progress.empty():
                step, total = progress.get_nowait()
                if not cancelled.is_set():
                    sender.send(self._response(step, total))
            images = await generation
        finally:
            watcher.cancel()
            if not generation.done():
                stop_event.set()  # this request failed: free the worker for the next one
        if cancelled.is_set() or images is None:
            return "cancelled", self._response(step, total, [])
        return "succeeded", self._response(step, total, images)

    def _generate(
        self, job: ImageJob, report: Callable[[int, int], None], stop_event: threading.Event
    ) -> list[bytes] | None:
        """Runs in the worker thread; touches no pb_utils. None when cancelled."""
        if stop_event.is_set():
            return None  # cancelled while waiting for its turn

        def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            # num_timesteps: the steps this call really runs (PNDM adds one; edits run fewer).
            report(index + 1, int(pipe.num_timesteps))
            if stop_event.is_set():
                pipe._interrupt = True  # diffusers skips the remaining steps
            return {}

        generator = torch.Generator(device=self.device)
        if job.seed is None:
            generator.seed()
        else:
            generator.manual_seed(job.seed)
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "num_inference_steps": job.steps,
            "guidance_scale": job.guidance_scale,
            "num_images_per_prompt": job.num_images,
            "generator": generator,
            "callback_on_step_end": on_step_end,
        }
        if job.mode == "txt2img":
            pipe: Any = self.txt2img
            kwargs.update(width=job.width, height=job.height)
        elif job.mode == "img2img":
            pipe = self.img2img
            kwargs.update(image=job.image, strength=job.strength)
        else:
            pipe = self.inpaint
            kwargs.update(
                image=job.image, mask_image=job.mask, strength=job.strength, width=job.width, height=job.height
            )
        # Bounds the VAE decode's memory peak (large images, several images per call).
        apply_vae_plan(pipe.vae, vae_memory_plan(job.width, job.height, job.num_images, self.vae_tiling_above_pixels))
        with torch.inference_mode():
            images = pipe(**kwargs).images
        if stop_event.is_set():
            return None
        return [encode_png(image) for image in images]

    def _response(self, step: int, total: int, images: list[bytes] | None = None) -> Any:
        tensors = [
            pb_utils.Tensor("step", np.array([step], dtype=np.int32)),
            pb_utils.Tensor("total_steps", np.array([total], dtype=np.int32)),
        ]
        if images is not None:
            array = np.empty((len(images),), dtype=np.object_)
            array[:] = images
            tensors.append(pb_utils.Tensor("images", array))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.prepare_executor.shutdown(wait=True, cancel_futures=True)
        del self.txt2img, self.img2img, self.inpaint
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
