"""Reading a model's config.pbtxt without Triton: its outputs and string parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.config import REPO_ROOT
from adapter.core import image_inputs
from adapter.core.errors import InvalidArgument
from adapter.triton.model_files import read_model_file

REPOSITORY = REPO_ROOT / "model_repository"


def test_the_served_models_are_told_apart_by_their_outputs() -> None:
    image, llm, embedding = (read_model_file(REPOSITORY, name) for name in ("image", "llm", "embedding"))
    assert image is not None and "images" in image.outputs and image.parameters["default_steps"].isdigit()
    assert llm is not None and "text_output" in llm.outputs and "images" not in llm.outputs
    assert embedding is not None and "embedding" in embedding.outputs


def test_no_file_or_a_name_outside_the_repository_is_none(tmp_path: Path) -> None:
    assert read_model_file(tmp_path, "absent") is None
    assert read_model_file(REPOSITORY, "../model_repository/image") is None
    assert read_model_file(REPOSITORY, "") is None


def test_comments_do_not_count_as_outputs(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(
        'input [ { name: "x" } ]\n# output [ { name: "images" } ]\noutput [\n  { name: "y", dims: [ 1 ] }\n]\n'
    )
    found = read_model_file(tmp_path, "m")
    assert found is not None and found.outputs == frozenset({"y"})


def test_an_unreadable_image_says_so_without_quoting_python_objects() -> None:
    with pytest.raises(InvalidArgument) as refused:
        image_inputs._decode("image", b"not a picture", 10**6)
    assert "object at 0x" not in refused.value.message and "BytesIO" not in refused.value.message
    assert "image is not a readable PNG, JPEG or WebP image" in refused.value.message
