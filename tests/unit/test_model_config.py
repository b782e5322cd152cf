"""ModelParameters: typed reads of a Triton model config's `parameters`, with env overrides."""

from __future__ import annotations

import json

import pytest

from model_runtime.model_config import ModelParameters

ENV = "UNIT_TEST_MODEL_PARAM_OVERRIDE"


def params(**values: str) -> ModelParameters:
    config = {"name": "llm", "parameters": {key: {"string_value": value} for key, value in values.items()}}
    return ModelParameters(json.dumps(config))


def test_model_name_is_read_from_the_config() -> None:
    assert params().model_name == "llm"


def test_config_without_name_or_parameters_gives_defaults() -> None:
    p = ModelParameters("{}")
    assert p.model_name == ""
    assert p.string("model_id", "fallback") == "fallback"
    assert p.integer("max_tokens", 64) == 64
    assert p.boolean("stream", True) is True


def test_string_parameter_is_returned_as_configured() -> None:
    assert params(model_id="org/model").string("model_id", "default") == "org/model"


def test_missing_string_parameter_gives_the_default() -> None:
    assert params(other="x").string("model_id", "default") == "default"


def test_empty_string_parameter_gives_the_default() -> None:
    assert params(model_id="").string("model_id", "default") == "default"


def test_parameter_without_string_value_gives_the_default() -> None:
    p = ModelParameters(json.dumps({"parameters": {"model_id": {}}}))
    assert p.string("model_id", "default") == "default"


def test_set_environment_variable_overrides_the_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "from-env")
    assert params(model_id="from-config").string("model_id", "default", env=ENV) == "from-env"


def test_environment_variable_overrides_the_default_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "from-env")
    assert params().string("model_id", "default", env=ENV) == "from-env"


def test_empty_environment_variable_does_not_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "")
    assert params(model_id="from-config").string("model_id", "default", env=ENV) == "from-config"


def test_unset_environment_variable_does_not_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert params(model_id="from-config").string("model_id", "default", env=ENV) == "from-config"


def test_environment_is_not_read_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("model_id", "from-env")
    monkeypatch.setenv("MODEL_ID", "from-env")
    assert params(model_id="from-config").string("model_id", "default") == "from-config"


@pytest.mark.parametrize(("text", "value"), [("64", 64), (" 8 ", 8), ("-3", -3), ("0", 0)])
def test_integer_parameter_is_parsed(text: str, value: int) -> None:
    assert params(max_tokens=text).integer("max_tokens", 1) == value


def test_missing_integer_parameter_gives_the_default() -> None:
    assert params().integer("max_tokens", 256) == 256


@pytest.mark.parametrize("text", ["many", "1.5", "0x10", "1e3"])
def test_bad_integer_parameter_raises_naming_the_key(text: str) -> None:
    with pytest.raises(ValueError, match="max_tokens") as raised:
        params(max_tokens=text).integer("max_tokens", 1)
    assert repr(text) in str(raised.value)


def test_integer_below_minimum_raises_naming_the_key() -> None:
    with pytest.raises(ValueError, match="max_tokens.*>= 1"):
        params(max_tokens="0").integer("max_tokens", 16, minimum=1)


def test_integer_at_minimum_is_accepted() -> None:
    assert params(max_tokens="1").integer("max_tokens", 16, minimum=1) == 1


def test_default_below_minimum_is_also_refused() -> None:
    with pytest.raises(ValueError, match="instances"):
        params().integer("instances", 0, minimum=1)


@pytest.mark.parametrize("text", ["true", "TRUE", "1", "yes", "on", " On "])
def test_true_words_parse_to_true(text: str) -> None:
    assert params(flag=text).boolean("flag", False) is True


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "off", " OFF "])
def test_false_words_parse_to_false(text: str) -> None:
    assert params(flag=text).boolean("flag", True) is False


@pytest.mark.parametrize("default", [True, False])
def test_missing_boolean_parameter_gives_the_default(default: bool) -> None:
    assert params().boolean("flag", default) is default


@pytest.mark.parametrize("text", ["maybe", "2", "t", "enabled"])
def test_bad_boolean_parameter_raises_naming_the_key(text: str) -> None:
    with pytest.raises(ValueError, match="flag"):
        params(flag=text).boolean("flag", False)
