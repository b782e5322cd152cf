"""compose: docker-compose.grpc.yml against the Compose specification's JSON schema (the copy
vendored in the check-jsonschema package), then, as run with the default variables: the GPU
reservation, shm_size, explicit model control, health-gated start, volumes, ports, Prometheus'
targets, Triton's HTTP model control kept on the loopback, and the variables each service gets
(drift: ones nobody reads)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

import yaml

from .common import Paths, Report, ToolMissing, load_yaml
from .sources import (
    TRITON_THIRD_PARTY_VARIABLES,
    adapter_variables,
    config_model_ids,
    dockerfile_args,
    model_variables,
    option_values,
)

# model_repository/<model>/config.pbtxt parameter model_id <-> the variable that overrides it.
MODEL_ID_VARIABLES = {"llm": "LLM_MODEL_ID", "embedding": "EMBEDDING_MODEL_ID", "image": "IMAGE_MODEL_ID"}


MIN_SHM_BYTES = 1 << 30


_INTERPOLATION = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: Mapping[str, str], errors: list[str]) -> Any:
    """Compose's variable interpolation (${A}, ${A:-d}, ${A-d}, ${A:?e}, ${A:+v}, $$) applied to
    every string of a loaded compose document, as `docker compose config` does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env, errors) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env, errors) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        present = name in env
        current = env.get(name, "")
        if operator == ":-":
            return current if current else argument
        if operator == "-":
            return current if present else argument
        if operator in (":?", "?"):
            if (operator == ":?" and not current) or not present:
                errors.append(f"required variable {name} is not set: {argument}")
            return current
        if operator == ":+":
            return argument if current else ""
        if operator == "+":
            return argument if present else ""
        return current

    return _INTERPOLATION.sub(substitute, value)


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A compose service's environment (mapping or list form) as a dict."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        result = {}
        for item in raw:
            name, _, value = str(item).partition("=")
            result[name] = value
        return result
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def parse_bytes(text: str | int) -> int:
    """Compose byte values: 4gb, 2g, 512m, 1073741824."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", str(text).lower())
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * 1024 ** "bkmgt".index(match.group(2) or "b"))


def compose_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, as vendored by check-jsonschema."""
    try:
        from importlib.resources import files

        import check_jsonschema  # noqa: F401 - only its data file is used
    except ImportError as err:
        raise ToolMissing("check-jsonschema not installed (pyproject.toml's dev extras)") from err
    text = files("check_jsonschema").joinpath("builtin_schemas/vendor/compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_errors(document: Any, schema: Mapping[str, Any]) -> list[str]:
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    paths = [tuple(map(str, error.absolute_path)) for error in errors]
    messages = []
    for error, path in zip(errors, paths, strict=True):
        # A bad value inside an object also fails the object's unevaluatedProperties: report the
        # value's own error only.
        cascade = error.validator == "unevaluatedProperties" and any(
            len(other) > len(path) and other[: len(path)] == path for other in paths
        )
        if not cascade:
            messages.append(f"{'.'.join(path) or '(top level)'}: {error.message}")
    return messages


def check_compose(paths: Paths, report: Report, env: Mapping[str, str] | None = None) -> None:
    """The compose file as written (schema) and as run with the default variables (assertions)."""
    where = paths.compose
    try:
        raw = load_yaml(paths.compose)
    except yaml.YAMLError as err:
        report.add("compose", where, f"not valid YAML: {err}")
        return
    for message in schema_errors(raw, compose_schema()):
        report.add("compose", where, f"schema: {message}")
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        report.add("compose", where, "no services")
        return
    errors: list[str] = []
    document = interpolate(raw, env or {}, errors)
    for message in errors:
        report.add("compose", where, message)
    services = document["services"]
    for name in ("triton", "adapter"):
        if not isinstance(services.get(name), dict):
            report.add("compose", where, f"service {name!r} is missing")
    if not all(isinstance(services.get(name), dict) for name in ("triton", "adapter")):
        return
    for name, service in services.items():
        build = service.get("build")
        if isinstance(build, dict) and build.get("dockerfile"):
            context = (paths.compose.parent / str(build.get("context", "."))).resolve()
            if not (context / build["dockerfile"]).is_file():
                report.add("compose", where, f"{name}: build.dockerfile {build['dockerfile']} does not exist")
    _check_compose_triton(paths, services["triton"], report)
    _check_compose_adapter(paths, services["adapter"], services, report)
    _check_compose_prometheus(paths, services, report)


def _command_words(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def _check_compose_triton(paths: Paths, triton: Mapping[str, Any], report: Report) -> None:
    where = paths.compose
    devices = (((triton.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    gpu = [
        device
        for device in devices
        if device.get("driver") == "nvidia"
        and "gpu" in (device.get("capabilities") or [])
        and (device.get("count") not in (None, 0, "0") or device.get("device_ids"))
    ]
    if not gpu:
        report.add(
            "compose",
            where,
            "triton: no GPU reserved (deploy.resources.reservations.devices with driver nvidia, "
            "capabilities [gpu] and a count or device_ids)",
        )
    try:
        shm = parse_bytes(triton.get("shm_size", 0))
    except ValueError:
        report.add("compose", where, f"triton: shm_size {triton.get('shm_size')!r} is not a size")
    else:
        if shm < MIN_SHM_BYTES:
            report.add(
                "compose",
                where,
                f"triton: shm_size must be at least 1gb for the python backend (got {triton.get('shm_size', '64mb')})",
            )
    words = _command_words(triton)
    if "--model-control-mode=explicit" not in words and "explicit" not in option_values(words, "--model-control-mode"):
        report.add("compose", where, "triton: command lacks --model-control-mode=explicit (the adapter loads models)")
    if not any("--model-repository" in word for word in words):
        report.add("compose", where, "triton: command lacks --model-repository")
    healthcheck = " ".join(map(str, (triton.get("healthcheck") or {}).get("test") or []))
    if "/v2/health/ready" not in healthcheck:
        report.add("compose", where, "triton: the healthcheck must ask /v2/health/ready")
    http_address = (option_values(words, "--http-address") or ["0.0.0.0"])[-1]
    http_restricted = any("model-repository" in v for v in option_values(words, "--http-restricted-api"))
    if http_address not in ("127.0.0.1", "localhost", "::1") and not http_restricted:
        report.add(
            "compose",
            where,
            f"triton: HTTP listens on {http_address} with model control open; only the healthcheck (inside the "
            "container) needs it: --http-address=127.0.0.1 (or --http-restricted-api=model-repository:...)",
        )
    build_args = (triton.get("build") or {}).get("args") if isinstance(triton.get("build"), dict) else None
    if isinstance(build_args, list):
        build_args = dict(str(item).partition("=")[::2] for item in build_args)
    for arg in ("TORCH_CUDA", "TORCH_INDEX_URL"):
        if isinstance(build_args, dict) and arg in build_args:
            value = str(build_args[arg] or "")
            wanted = dockerfile_args(paths.triton_dockerfile).get(arg, "")
            if value != wanted:
                report.add(
                    "compose",
                    where,
                    f"triton: build arg {arg}={value!r} overrides the Dockerfile's {wanted!r}, which is paired with "
                    "its base image's CUDA (an empty TORCH_INDEX_URL meant PyPI's CUDA 13 torch)",
                )
    targets = _mount_targets(triton)
    if "/models" not in targets and not any(w.startswith("--model-repository=/models") for w in words):
        report.add("compose", where, "triton: no model repository mounted at /models")
    if not any(target.startswith("/var/cache/huggingface") for target in targets):
        report.add("compose", where, "triton: no model-cache volume at /var/cache/huggingface (HF_HOME)")
    environment = environment_of(triton)
    allowed = model_variables(paths.model_repository, paths.model_runtime) | TRITON_THIRD_PARTY_VARIABLES
    for name in sorted(set(environment) - allowed):
        report.add("drift", where, f"triton sets {name}, which neither the models nor huggingface/torch read")
    for model, model_id in config_model_ids(paths.model_repository).items():
        variable = MODEL_ID_VARIABLES.get(model)
        if variable is None:
            continue
        if variable not in environment:
            report.add("compose", where, f"triton: {variable} is not set (one variable must switch the {model} model)")
        elif environment[variable] != model_id:
            report.add(
                "drift",
                where,
                f"triton: {variable} defaults to {environment[variable]!r} but "
                f"model_repository/{model}/config.pbtxt says {model_id!r}",
            )


def _mount_targets(service: Mapping[str, Any]) -> list[str]:
    targets = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            targets.append(str(volume.get("target", "")))
        else:
            parts = str(volume).split(":")
            targets.append(parts[1] if len(parts) > 1 else parts[0])
    return targets


def _check_compose_adapter(
    paths: Paths,
    adapter: Mapping[str, Any],
    services: Mapping[str, Any],
    report: Report,
    triton: str = "triton",
    label: str = "adapter",
) -> None:
    """`label`: the adapter service's name in the messages; `triton`: the Triton service it fronts."""
    where = paths.compose
    depends = adapter.get("depends_on") or {}
    condition = depends.get(triton, {}).get("condition") if isinstance(depends, dict) else None
    if condition != "service_healthy":
        report.add("compose", where, f"{label}: depends_on {triton} must have condition: service_healthy")
    environment = environment_of(adapter)
    read = adapter_variables(paths.adapter_config)
    for name in sorted(set(environment) - read):
        report.add("drift", where, f"{label} sets {name}, which adapter/config.py does not read")
    for name in sorted(n for n in read if n.startswith("GRPC_") and n not in environment):
        report.add("compose", where, f"{label}: {name} is read by the adapter but not set (every GRPC_* must be)")
    triton_url = environment.get("TRITON_URL", "")
    host, _, port = triton_url.rpartition(":")
    if "://" in triton_url or host != triton or port != "8001":
        report.add("compose", where, f"{label}: TRITON_URL must be <triton service>:8001 (gRPC), got {triton_url!r}")
    metrics_url = environment.get("TRITON_METRICS_URL", "")
    if not re.fullmatch(r"http://[^/:]+:8002/metrics", metrics_url):
        report.add(
            "compose", where, f"{label}: TRITON_METRICS_URL must be http://<triton>:8002/metrics ({metrics_url!r})"
        )
    image_dir = environment.get("IMAGE_DIR")
    if not image_dir:
        report.add("compose", where, f"{label}: IMAGE_DIR is not set")
    elif image_dir not in _mount_targets(adapter):
        report.add("compose", where, f"{label}: IMAGE_DIR {image_dir} is not a mounted volume (jobs would be lost)")
    grpc_port = environment.get("GRPC_PORT", "50051")
    published = [
        str(p).rsplit(":", 1)[-1] if not isinstance(p, dict) else str(p.get("target"))
        for p in adapter.get("ports") or []
    ]
    if grpc_port not in published:
        report.add("compose", where, f"{label}: the gRPC port {grpc_port} is not published")
    http_port = environment.get("OPENAI_HTTP_PORT", "8080")
    if http_port != "0" and http_port not in published:
        report.add("compose", where, f"{label}: the OpenAI HTTP port {http_port} (OPENAI_HTTP_PORT) is not published")
    healthcheck = " ".join(map(str, (adapter.get("healthcheck") or {}).get("test") or []))
    if "healthcheck" not in healthcheck and "grpc" not in healthcheck:
        report.add("compose", where, f"{label}: the healthcheck must speak grpc.health.v1 (adapter-healthcheck)")


def _check_compose_prometheus(paths: Paths, services: Mapping[str, Any], report: Report) -> None:
    where = paths.compose
    prometheus = services.get("prometheus")
    if not isinstance(prometheus, dict):
        report.add("compose", where, "no prometheus service (optional, under profiles: [monitoring])")
        return
    if "monitoring" not in (prometheus.get("profiles") or []):
        report.add("compose", where, "prometheus must be optional: profiles: [monitoring]")
    try:
        config = load_yaml(paths.prometheus)
    except (OSError, yaml.YAMLError) as err:
        report.add("compose", paths.prometheus, f"cannot read: {err}")
        return
    targets = {
        target
        for job in (config or {}).get("scrape_configs") or []
        for static in job.get("static_configs") or []
        for target in static.get("targets") or []
    }
    metrics_port = environment_of(services["adapter"]).get("METRICS_PORT", "9464")
    for wanted in ("triton:8002", f"adapter:{metrics_port}"):
        if wanted not in targets:
            report.add("compose", paths.prometheus, f"Prometheus does not scrape {wanted}")
