"""Shared fixtures: one real adapter with an embedded Triton for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter, build_small_models, start_adapter, stop_adapter


@pytest.fixture(scope="session")
def small_models() -> None:
    build_small_models()


@pytest.fixture(scope="session")
def adapter(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    workdir = tmp_path_factory.mktemp("adapter")
    running = start_adapter(
        workdir / "adapter.log",
        env={
            "IMAGE_DIR": str(workdir / "images"),
            # Above the image model's own limit (1024): such a job passes the adapter and fails in
            # the model, which is how the tests see a model failure end a job.
            "IMAGE_MAX_WIDTH": "2048",
            "IMAGE_MAX_INPUT_BYTES": "1000000",
            "IMAGE_MAX_QUEUED_JOBS": "6",
            # Longer than the whole suite: the default (5 min) would unload idle models between the
            # tests that use them and the ones that check they are loaded.
            "MODEL_KEEP_ALIVE_SECONDS": "3600",
        },
    )
    try:
        yield running
    finally:
        stop_adapter(running)


@pytest.fixture(scope="session")
def channel(adapter: RunningAdapter) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(adapter.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> pb_grpc.InferenceServiceStub:
    return pb_grpc.InferenceServiceStub(channel)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Unit tests first: they fail fast and need no Triton.
    items.sort(key=lambda item: 0 if "tests/unit" in str(Path(str(item.fspath)).as_posix()) else 1)
