"""adapter/config.py's declarations: each setting declared once, and the README's configuration
table, the parsing and the deployment checks' variables all follow them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from adapter.config import SETTINGS, ConfigError, Setting, Settings, load_settings, markdown_table

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Configuration (adapter, environment variables)"


def _readme_table() -> str:
    """The table of the README's configuration section: its lines from the header row on."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1]
    section = re.split(r"^#{2,3} ", section, maxsplit=1, flags=re.MULTILINE)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variable |"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return "\n".join(table)


def test_the_readme_table_is_the_declarations() -> None:
    readme = _readme_table().splitlines()
    generated = markdown_table().splitlines()
    missing = [row for row in generated if row not in readme]
    stale = [row for row in readme if row not in generated]
    assert readme == generated, (
        "README.md's configuration table differs from adapter/config.py's declarations; paste the"
        " output of `python -m adapter.config` there.\n"
        f"rows the README lacks or words differently: {missing}\nrows no declaration gives: {stale}"
    )


def test_every_field_is_declared_once_with_its_own_variable() -> None:
    assert [s.attribute for s in SETTINGS] == [f.name for f in dataclasses.fields(Settings)]
    names = [s.env for s in SETTINGS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    for declared in SETTINGS:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", declared.env), declared.env
        assert declared.meaning and declared.expected, declared.env


def test_each_default_is_the_value_of_an_unset_or_blank_variable() -> None:
    assert load_settings({}) == Settings()
    for declared in SETTINGS:
        if declared.blank_is_value:
            continue
        settings = load_settings({declared.env: "  "})
        assert getattr(settings, declared.attribute) == declared.default, declared.env


def test_each_declaration_parses_its_variable() -> None:
    """A value differing from the default, for every setting, reaches its field."""
    values = {
        "GRPC_HOST": ("::1", "::1"),
        "GRPC_MAX_WORKERS": ("3", 3),
        "GRPC_USE_TLS": None,  # needs readable files: test_adapter_config covers it
        "GRPC_CERT_FILE": ("/tmp/a.crt", Path("/tmp/a.crt")),
        "GRPC_CLIENT_CA_FILE": None,  # needs TLS
        "GRPC_REQUIRE_API_KEY": None,  # needs a key
        "GRPC_API_KEY": (" k1 ", "k1"),
        "MODEL_REPOSITORY": None,  # must be a folder
        "TOKENIZER_CACHE_DIR": ("/tmp/tokenizers", Path("/tmp/tokenizers")),
        "MODEL_KEEP_ALIVE_SECONDS": ("-1", None),
        "MODEL_MEMORY_ESTIMATES": ("llm=5,image=7", (("llm", 5), ("image", 7))),
        "PRELOAD_MODELS": ("", ()),
        "INFERENCE_REQUIRE_CUDA": ("off", False),
        "VRAM_BUDGET_FRACTION": ("0.5", 0.5),
        "LOG_LEVEL": ("error", "ERROR"),
    }
    for declared in SETTINGS:
        if declared.env in values:
            case = values[declared.env]
            if case is None:
                continue
            text, expected = case
        elif isinstance(declared.default, bool):
            text, expected = ("false" if declared.default else "true"), not declared.default
        elif isinstance(declared.default, int):
            text, expected = str(declared.default + 8), declared.default + 8
        elif isinstance(declared.default, float):
            text, expected = str(declared.default + 1), declared.default + 1
        elif isinstance(declared.default, Path):
            text, expected = "/tmp/elsewhere", Path("/tmp/elsewhere")
        else:
            text, expected = "some-value", "some-value"
        env = {declared.env: text}
        if declared.env == "TRITON_URL":
            env[declared.env] = expected = "triton:8001"
        assert getattr(load_settings(env), declared.attribute) == expected, declared.env


# Free text, paths and name lists: any value is one.
FREE = [s for s in SETTINGS if getattr(s.parse, "__name__", "") in ("_text", "Path", "_name_list")]


@pytest.mark.parametrize("declared", [s for s in SETTINGS if s not in FREE], ids=lambda s: s.env)
def test_a_bad_value_names_its_variable_and_what_it_expects(declared: Setting) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({declared.env: "not-a-value"})
    assert str(raised.value) == f"{declared.env}='not-a-value' is not valid: expected {declared.expected}"


def test_keys_are_left_out_of_the_repr() -> None:
    hidden = {f.name for f in dataclasses.fields(Settings) if not f.repr}
    assert hidden == {"grpc_api_key", "grpc_admin_api_key", "hf_token"}
