"""vllm: `llm` on Triton's vLLM backend (docker/vllm/): its model repository, the compose profile
`vllm` (services triton-vllm and adapter-vllm) and the Kubernetes overlay docker/vllm (rendered
here, for the subset of kustomize it uses, then held to the k8s check's schemas and assertions).

- model repository: every model is `backend: "vllm"` with a `1/model.json` naming its weights, no
  batching or non-decoupled policy (the backend asserts both), and a `tokenizer` parameter (the
  adapter renders chat templates with it) that names the same hub model as model.json;
- NVIDIA's vLLM image is `nvcr.io/nvidia/tritonserver:<yy.mm>-vllm-python-py3`, of the same release
  as docker/triton.Dockerfile's base (one documented driver floor), in compose and Kubernetes alike;
- Triton: explicit model control, no --disable-auto-complete-config (the backend completes the
  config with its tensors), HTTP on the loopback, a GPU, /dev/shm; the vLLM repository mounted at
  /models and the same one at the adapter's MODEL_REPOSITORY;
- the adapter: Triton's URL, a health-gated start, and only variables adapter/config.py reads.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .common import Paths, Report, load_yaml, load_yaml_documents
from .compose import _check_compose_adapter, _command_words, environment_of, interpolate, parse_bytes
from .k8s import K8S_VERSIONS, _check_k8s_semantics, _containers, _kubernetes_validate
from .sources import TRITON_THIRD_PARTY_VARIABLES, dockerfile_instructions, option_values

VLLM_IMAGE = re.compile(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-vllm-python-py3")
# What vLLM's Triton reads besides huggingface/torch/NVIDIA's variables: vLLM's own, and HOME (its
# compile caches).
VLLM_VARIABLES = re.compile(r"VLLM_[A-Z0-9_]+|HOME")
_PARAMETER = re.compile(r'key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"')


def check_vllm(paths: Paths, report: Report) -> None:
    release = _base_release(paths)
    models = _check_repository(paths, report)
    _check_compose(paths, report, release)
    _check_overlay(paths, report, release, models)


def _base_release(paths: Paths) -> str | None:
    for _, keyword, arguments in dockerfile_instructions(paths.triton_dockerfile.read_text()):
        match = re.search(r"tritonserver:(\d\d\.\d\d)-py3", arguments) if keyword == "FROM" else None
        if match:
            return match.group(1)
    return None


def _check_image(where: Path, image: str, release: str | None, report: Report) -> None:
    match = VLLM_IMAGE.fullmatch(image)
    if not match:
        report.add(
            "vllm",
            where,
            f"Triton's image {image!r} is not NVIDIA's nvcr.io/nvidia/tritonserver:<yy.mm>-vllm-python-py3",
        )
    elif release and match.group(1) != release:
        report.add(
            "vllm",
            where,
            f"the vLLM image is release {match.group(1)} but docker/triton.Dockerfile's base is {release}: keep one "
            "release (one host driver to document)",
        )


def _strip_comments(text: str) -> str:
    return re.sub(r"(?m)#.*$", "", text)


def _check_repository(paths: Paths, report: Report) -> dict[str, dict[str, str]]:
    """Each model's config.pbtxt and model.json; returns model -> the files' texts by name."""
    repository = paths.vllm / "model_repository"
    models: dict[str, dict[str, str]] = {}
    configs = sorted(repository.glob("*/config.pbtxt"))
    if not configs:
        report.add("vllm", repository, "no model (a <name>/config.pbtxt with backend vllm)")
    for config_path in configs:
        model = config_path.parent.name
        text = config_path.read_text()
        config = _strip_comments(text)
        parameters = dict(_PARAMETER.findall(config))
        if not re.search(r'backend:\s*"vllm"', config):
            report.add("vllm", config_path, 'backend must be "vllm"')
        name = re.search(r'(?m)^name:\s*"([^"]+)"', config)
        if name and name.group(1) != model:
            report.add("vllm", config_path, f"name {name.group(1)!r} differs from its folder {model!r}")
        batch = re.search(r"max_batch_size:\s*(\d+)", config)
        if batch and int(batch.group(1)) != 0:
            report.add("vllm", config_path, "max_batch_size must be 0: vLLM batches itself")
        if re.search(r"decoupled:\s*false", config):
            report.add("vllm", config_path, "the vLLM backend requires the decoupled transaction policy")
        engine_path = config_path.parent / "1" / "model.json"
        try:
            engine = json.loads(engine_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            report.add("vllm", engine_path, f"cannot read vLLM's engine arguments: {err}")
            continue
        models[model] = {"config.pbtxt": text, "model.json": engine_path.read_text()}
        weights = engine.get("model") if isinstance(engine, dict) else None
        if not isinstance(weights, str) or not weights:
            report.add("vllm", engine_path, 'no "model" (the weights: a hub id or a folder)')
            continue
        utilization = engine.get("gpu_memory_utilization", 0.9)
        if not isinstance(utilization, int | float) or not 0 < utilization <= 1:
            report.add("vllm", engine_path, f"gpu_memory_utilization must be in (0, 1], got {utilization!r}")
        tokenizer = parameters.get("tokenizer", "")
        if not tokenizer:
            report.add(
                "vllm",
                config_path,
                "no tokenizer parameter: the adapter cannot render chat templates, ChatStream would be refused",
            )
        elif tokenizer != engine.get("tokenizer", weights):
            report.add(
                "vllm",
                config_path,
                f"tokenizer {tokenizer!r} is not the tokenizer vLLM loads ({engine.get('tokenizer', weights)!r} in "
                "model.json): chats would be rendered for another model",
            )
    return models


def _check_triton_command(where: Path, label: str, words: list[str], report: Report) -> None:
    if "--model-control-mode=explicit" not in words and "explicit" not in option_values(words, "--model-control-mode"):
        report.add("vllm", where, f"{label}: Triton lacks --model-control-mode=explicit (the adapter loads models)")
    if "--disable-auto-complete-config" in words:
        report.add(
            "vllm",
            where,
            f"{label}: --disable-auto-complete-config leaves the vLLM model without the tensors its backend declares",
        )
    if (option_values(words, "--http-address") or ["0.0.0.0"])[-1] not in ("127.0.0.1", "localhost", "::1"):
        report.add("vllm", where, f"{label}: Triton's HTTP (model control) must listen on 127.0.0.1")


def _check_variables(where: Path, label: str, names: set[str], report: Report) -> None:
    for name in sorted(names):
        if name not in TRITON_THIRD_PARTY_VARIABLES and not VLLM_VARIABLES.fullmatch(name):
            report.add("drift", where, f"{label}: Triton gets {name}, which neither vLLM nor huggingface/torch read")


def _check_compose(paths: Paths, report: Report, release: str | None) -> None:
    where = paths.compose
    try:
        raw = load_yaml(where)
    except yaml.YAMLError:
        return  # the compose check reports it
    errors: list[str] = []
    services = (interpolate(raw, {}, errors) or {}).get("services") or {}
    triton, adapter = services.get("triton-vllm"), services.get("adapter-vllm")
    if not isinstance(triton, dict) or not isinstance(adapter, dict):
        report.add("vllm", where, "no services triton-vllm and adapter-vllm (profile vllm)")
        return
    for name, service in (("triton-vllm", triton), ("adapter-vllm", adapter)):
        if "vllm" not in (service.get("profiles") or []):
            report.add("vllm", where, f"{name} must be in profiles: [vllm] (it would start beside the default stack)")
    _check_image(where, str(triton.get("image", "")), release, report)
    _check_triton_command(where, "triton-vllm", _command_words(triton), report)
    devices = (((triton.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices):
        report.add("vllm", where, "triton-vllm: no GPU reserved")
    try:
        if parse_bytes(triton.get("shm_size", 0)) < 1 << 30:
            report.add("vllm", where, "triton-vllm: shm_size must be at least 1gb")
    except ValueError:
        report.add("vllm", where, f"triton-vllm: shm_size {triton.get('shm_size')!r} is not a size")
    _check_variables(where, "triton-vllm", set(environment_of(triton)), report)
    repository = _mount_source(triton, "/models")
    if repository is None or (paths.compose.parent / repository).resolve() != (paths.vllm / "model_repository"):
        report.add("vllm", where, f"triton-vllm: /models must be docker/vllm/model_repository (mounted: {repository})")
    adapter_repository = environment_of(adapter).get("MODEL_REPOSITORY", "")
    if _mount_source(adapter, adapter_repository) != repository:
        report.add(
            "vllm",
            where,
            f"adapter-vllm: its MODEL_REPOSITORY ({adapter_repository or 'unset'}) must be the repository Triton "
            "serves: the adapter reads the tokenizer parameter there",
        )
    _check_compose_adapter(paths, adapter, services, report, triton="triton-vllm", label="adapter-vllm")


def _mount_source(service: Mapping[str, Any], target: str) -> str | None:
    for volume in service.get("volumes") or []:
        source, _, rest = str(volume).partition(":") if not isinstance(volume, dict) else ("", "", "")
        if isinstance(volume, dict) and volume.get("target") == target:
            return str(volume.get("source"))
        if rest.split(":")[0] == target:
            return source
    return None


# ---- the Kubernetes overlay -----------------------------------------------------------------------

_OVERLAY_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator", "patches"}


def render_overlay(overlay: Path, report: Report) -> list[tuple[Path, dict[str, Any]]]:
    """The overlay's resources as `kubectl apply -k` would apply them, for what it uses: resources
    (a directory with a kustomization, whose listed files are read), configMapGenerator with files,
    and strategic merge patches (maps merged, lists of named items merged by name, `$patch: delete`).
    Anything else is reported, not guessed at. Generated names carry no hash suffix here."""
    kustomization_path = overlay / "kustomization.yaml"
    kustomization = load_yaml(kustomization_path) or {}
    for field in sorted(set(kustomization) - _OVERLAY_FIELDS):
        report.add(
            "vllm", kustomization_path, f"{field}: not rendered by this check (extend scripts/deploy_checks/vllm.py)"
        )
    resources: list[tuple[Path, dict[str, Any]]] = []
    for entry in kustomization.get("resources") or []:
        base = (overlay / str(entry)).resolve()
        listed = (load_yaml(base / "kustomization.yaml") or {}).get("resources") or [] if base.is_dir() else [base.name]
        directory = base if base.is_dir() else base.parent
        for name in listed:
            resources += [(directory / str(name), d) for d in load_yaml_documents(directory / str(name))]
    for generator in kustomization.get("configMapGenerator") or []:
        data = {}
        for item in generator.get("files") or []:
            key, _, file = str(item).rpartition("=") if "=" in str(item) else (Path(item).name, "", str(item))
            path = overlay / file
            if not path.is_file():
                report.add("vllm", kustomization_path, f"configMapGenerator file {file} does not exist")
                continue
            data[key] = path.read_text()
        meta = {"name": generator["name"]}
        resources.append(
            (kustomization_path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
        )
    for patch in kustomization.get("patches") or []:
        patch_path = overlay / str(patch.get("path", ""))
        if set(patch) != {"path"}:
            report.add("vllm", kustomization_path, f"patch {patch}: only strategic merge patches by path are rendered")
            continue
        for document in load_yaml_documents(patch_path):
            target = (document.get("kind"), (document.get("metadata") or {}).get("name"))
            targets = [i for i, (_, d) in enumerate(resources) if (d.get("kind"), d["metadata"].get("name")) == target]
            if not targets:
                report.add("vllm", patch_path, f"patches {target[0]}/{target[1]}, which the base does not have")
                continue
            for i in targets:
                resources[i] = (patch_path, strategic_merge(resources[i][1], document))
    return resources


def strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge for the shapes the patches use: maps merge, lists of maps with a
    `name` merge item by item (`$patch: delete` removes one), other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        merged_list = copy.deepcopy(base)
        for item in patch:
            index = next((i for i, old in enumerate(merged_list) if old.get("name") == item["name"]), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    del merged_list[index]
            elif index is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[index] = strategic_merge(merged_list[index], item)
        return merged_list
    return copy.deepcopy(patch)


def _check_overlay(paths: Paths, report: Report, release: str | None, models: dict[str, dict[str, str]]) -> None:
    where = paths.vllm / "kustomization.yaml"
    if not where.is_file():
        report.add("vllm", paths.vllm, "no kustomization.yaml (kubectl apply -k docker/vllm)")
        return
    resources = render_overlay(paths.vllm, report)
    kv = _kubernetes_validate()
    versions = [kv.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    for path, document in resources:
        for version in versions:
            try:
                kv.validate(document, version, strict=True)
            except kv.ValidationError as err:
                label = f"{document['kind']}/{document['metadata'].get('name')}"
                at = ".".join(str(part) for part in err.path) or "(top level)"
                report.add("vllm", path, f"rendered {label} (Kubernetes {err.version}, strict): {at}: {err.message}")
                break
    # The base's assertions (GPU, probes, /dev/shm, Services, drift), with vLLM's variables.
    inner = Report(root=report.root)
    _check_k8s_semantics(paths, resources, inner, triton_variables=_vllm_variable)
    report.problems += [problem.replace("k8s: ", "vllm: ", 1) for problem in inner.problems]
    statefulsets = [d for _, d in resources if d.get("kind") == "StatefulSet"]
    config_maps = {d["metadata"]["name"]: d for _, d in resources if d.get("kind") == "ConfigMap"}
    for workload in statefulsets:
        pod = workload["spec"]["template"]["spec"]
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        containers = _containers(pod)
        for container in containers:
            mounts = {m.get("mountPath"): m.get("name") for m in container.get("volumeMounts") or []}
            args = [str(a) for a in container.get("args") or container.get("command") or []]
            if "tritonserver" in " ".join(args):
                _check_image(where, str(container.get("image", "")), release, report)
                _check_triton_command(where, "the overlay's Triton", args, report)
                wanted = "/models"
            else:
                env = {e.get("name"): e.get("value") for e in container.get("env") or []}
                wanted = str(env.get("MODEL_REPOSITORY", ""))
            source = (volumes.get(mounts.get(wanted)) or {}).get("configMap") or {}
            served = config_maps.get(source.get("name"), {}).get("data") or {}
            items = {item.get("path"): served.get(item.get("key")) for item in source.get("items") or []}
            for model, files in models.items():
                for name, text in files.items():
                    item = f"{model}/{name}" if name == "config.pbtxt" else f"{model}/1/{name}"
                    if items.get(item) != text:
                        report.add(
                            "vllm",
                            where,
                            f"{container.get('name')}: {wanted or 'its model repository'} does not hold "
                            f"docker/vllm/model_repository/{item} (a ConfigMap of those files, items at their paths)",
                        )


def _vllm_variable(name: str) -> bool:
    return name in TRITON_THIRD_PARTY_VARIABLES or bool(VLLM_VARIABLES.fullmatch(name))
