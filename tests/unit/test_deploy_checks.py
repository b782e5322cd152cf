"""scripts/check_deploy.py: the repository's deployment files pass, and each check catches a
deliberately broken copy (offline, a second or two in all)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_deploy", REPO / "scripts" / "check_deploy.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_deploy"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


check_deploy = _load_module()


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """The validators come from pyproject.toml's dev extras; CI must have them."""
    try:
        check_deploy.find_hadolint()
        check_deploy.compose_schema()
        check_deploy._kubernetes_validate()
    except check_deploy.ToolMissing as err:
        if os.environ.get("CI"):
            pytest.fail(str(err))
        pytest.skip(str(err))


def _copy_repository(target: Path) -> Path:
    """A copy of everything the checks read, to break one file at a time."""
    target.mkdir()
    for name in ("docker", "adapter", "model_repository", "model_runtime"):
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("docker-compose.grpc.yml", "pyproject.toml"):
        shutil.copy(REPO / name, target / name)
    return target


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Each check's problems on an intact copy (empty once the checkout is consistent); a broken
    copy is judged by what it adds, so work in progress elsewhere in the checkout does not matter."""
    intact = _copy_repository(tmp_path_factory.mktemp("intact") / "repo")
    return {name: set(check_deploy.run(check_deploy.Paths.of(intact), [name])) for name in check_deploy.CHECKS}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _copy_repository(tmp_path / "repo")


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new))


@pytest.fixture
def new_problems(baseline: dict[str, set[str]]) -> Callable[[Path, str, Callable[[], object]], list[str]]:
    def found(root: Path, only: str, breaking: Callable[[], object]) -> list[str]:
        breaking()
        return [p for p in check_deploy.run(check_deploy.Paths.of(root), [only]) if p not in baseline[only]]

    return found


NewProblems = Callable[[Path, str, Callable[[], object]], list[str]]


def test_the_repository_passes_every_check() -> None:
    assert check_deploy.run(check_deploy.Paths.of(REPO)) == []


# --- hadolint -----------------------------------------------------------------------------------


def test_hadolint_catches_an_unpinned_pip_install(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "triton.Dockerfile"
    found = new_problems(root, "hadolint", lambda: edit(dockerfile, "        torch==2.13.0 \\", "        torch \\"))
    assert any("DL3013" in p for p in found), found


def test_hadolint_catches_a_latest_base_image(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "adapter.Dockerfile"
    found = new_problems(
        root,
        "hadolint",
        lambda: edit(dockerfile, "FROM python:3.11.11-slim-bookworm AS runtime", "FROM python AS runtime"),
    )
    assert any("DL3006" in p for p in found), found


# --- drift: versions and image contents ---------------------------------------------------------


def test_drift_catches_a_version_that_differs_from_pyproject(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "triton.Dockerfile"
    found = new_problems(
        root, "drift", lambda: edit(dockerfile, "        torch==2.13.0 \\", "        torch==2.12.0 \\")
    )
    assert any("torch==2.12.0 but pyproject.toml pins torch==2.13.0" in p for p in found), found


def test_drift_catches_an_unpinned_package(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "adapter.Dockerfile"
    found = new_problems(root, "drift", lambda: edit(dockerfile, "protobuf==6.33.6", "protobuf>=6"))
    assert any("protobuf>=6 is not pinned with ==" in p for p in found), found


def test_drift_catches_torch_in_the_adapter_image(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "adapter.Dockerfile"
    found = new_problems(root, "drift", lambda: edit(dockerfile, "numpy==1.26.4 \\", "numpy==1.26.4 torch==2.13.0 \\"))
    assert any("this image must not install torch" in p for p in found), found


def test_drift_catches_a_missing_runtime_dependency(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "adapter.Dockerfile"
    found = new_problems(root, "drift", lambda: edit(dockerfile, "grpcio-reflection==1.81.1 \\\n", ""))
    assert any("does not install grpcio-reflection" in p for p in found), found
    # ... which the adapter imports: caught from its source too.
    assert any("the adapter imports grpc_reflection" in p for p in found), found


def test_drift_catches_an_adapter_import_the_image_lacks(root: Path, new_problems: NewProblems) -> None:
    module = root / "adapter" / "new_feature.py"
    found = new_problems(root, "drift", lambda: module.write_text("import yaml\n"))
    assert any("the adapter imports yaml" in p for p in found), found


def test_drift_catches_a_model_runtime_module_the_adapter_image_does_not_copy(
    root: Path, new_problems: NewProblems
) -> None:
    module = root / "adapter" / "new_feature.py"
    (root / "model_runtime" / "new_limits.py").write_text("LIMIT = 1\n")
    found = new_problems(root, "drift", lambda: module.write_text("from model_runtime import new_limits\n"))
    assert any("does not copy model_runtime/new_limits.py" in p for p in found), found
    assert any("the build context leaves out model_runtime/new_limits.py" in p for p in found), found


def test_drift_pins_follow_pyproject(root: Path, new_problems: NewProblems) -> None:
    pyproject = root / "pyproject.toml"
    found = new_problems(root, "drift", lambda: edit(pyproject, '"numpy==1.26.4"', '"numpy==1.26.5"'))
    assert sum("pyproject.toml pins numpy==1.26.5" in p for p in found) == 2, found  # both images


# --- compose ------------------------------------------------------------------------------------


def test_compose_catches_a_missing_gpu_reservation(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(root, "compose", lambda: edit(compose, "              capabilities: [gpu]\n", "", count=2))
    assert any("triton: no GPU reserved" in p for p in found), found


def test_compose_catches_a_variable_the_adapter_does_not_read(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(
        root,
        "compose",
        lambda: edit(compose, "      GRPC_HOST: 0.0.0.0\n", "      GRPC_HOST: 0.0.0.0\n      GRPC_PORTT: '1'\n"),
    )
    assert any("adapter sets GRPC_PORTT, which adapter/config.py does not read" in p for p in found), found


def test_compose_catches_a_grpc_variable_left_out(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(
        root, "compose", lambda: edit(compose, "      GRPC_MAX_WORKERS: ${GRPC_MAX_WORKERS:-10}\n", "")
    )
    assert any("GRPC_MAX_WORKERS is read by the adapter but not set" in p for p in found), found


def test_compose_catches_a_schema_violation(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(
        root, "compose", lambda: edit(compose, "    shm_size: 4gb\n", "    shm_size: 4gb\n    gpus_please: true\n")
    )
    assert any("schema: services.triton: " in p and "'gpus_please' was unexpected" in p for p in found), found


def test_compose_catches_a_small_shm(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(root, "compose", lambda: edit(compose, "shm_size: 4gb", "shm_size: 64mb"))
    assert any("shm_size must be at least 1gb" in p for p in found), found


def test_compose_catches_a_start_not_gated_on_health(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(
        root, "compose", lambda: edit(compose, "condition: service_healthy", "condition: service_started", count=2)
    )
    assert any("condition: service_healthy" in p for p in found), found


def test_compose_catches_a_default_model_that_differs_from_the_config(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(
        root, "compose", lambda: edit(compose, "Qwen/Qwen2.5-0.5B-Instruct}", "Qwen/Qwen2.5-7B-Instruct}")
    )
    assert any("LLM_MODEL_ID defaults to 'Qwen/Qwen2.5-7B-Instruct'" in p for p in found), found


def test_compose_catches_implicit_model_control(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(root, "compose", lambda: edit(compose, "      - --model-control-mode=explicit\n", "", count=2))
    assert any("--model-control-mode=explicit" in p for p in found), found


def test_compose_catches_prometheus_missing_a_target(root: Path, new_problems: NewProblems) -> None:
    config = root / "docker" / "prometheus.yml"
    found = new_problems(root, "compose", lambda: edit(config, '["adapter:9464"]', "[]"))
    assert any("Prometheus does not scrape adapter:9464" in p for p in found), found


# --- Kubernetes ---------------------------------------------------------------------------------


def test_k8s_catches_a_wrong_field_type(root: Path, new_problems: NewProblems) -> None:
    manifest = root / "docker" / "k8s" / "statefulset.yaml"
    found = new_problems(root, "k8s", lambda: edit(manifest, "  replicas: 2\n", "  replicas: two\n"))
    assert any("spec.replicas: 'two' is not of type 'integer'" in p for p in found), found


def test_k8s_catches_an_unknown_field(root: Path, new_problems: NewProblems) -> None:
    manifest = root / "docker" / "k8s" / "pdb.yaml"
    found = new_problems(root, "k8s", lambda: edit(manifest, "  maxUnavailable: 1\n", "  maxUnavailible: 1\n"))
    assert any("Additional properties are not allowed ('maxUnavailible'" in p for p in found), found


def test_k8s_catches_a_missing_gpu_limit(root: Path, new_problems: NewProblems) -> None:
    manifest = root / "docker" / "k8s" / "statefulset.yaml"
    found = new_problems(root, "k8s", lambda: edit(manifest, "              nvidia.com/gpu: 1\n", ""))
    assert any("Triton has no nvidia.com/gpu limit" in p for p in found), found


def test_k8s_catches_a_service_that_is_not_headless(root: Path, new_problems: NewProblems) -> None:
    manifest = root / "docker" / "k8s" / "service.yaml"
    found = new_problems(root, "k8s", lambda: edit(manifest, "  clusterIP: None\n  # Only", "  # Only"))
    assert any("no headless Service" in p for p in found), found


def test_k8s_catches_shm_not_in_memory(root: Path, new_problems: NewProblems) -> None:
    manifest = root / "docker" / "k8s" / "statefulset.yaml"
    found = new_problems(root, "k8s", lambda: edit(manifest, "            medium: Memory\n", ""))
    assert any("/dev/shm from an emptyDir with medium: Memory" in p for p in found), found


def test_k8s_catches_an_adapter_variable_the_adapter_does_not_read(root: Path, new_problems: NewProblems) -> None:
    manifest = root / "docker" / "k8s" / "configmap.yaml"
    found = new_problems(
        root, "k8s", lambda: edit(manifest, "  LOG_LEVEL: INFO\n", "  LOG_LEVEL: INFO\n  LOGLEVEL: INFO\n")
    )
    assert any("the adapter gets LOGLEVEL, which adapter/config.py does not read" in p for p in found), found


def test_k8s_catches_a_manifest_left_out_of_the_kustomization(root: Path, new_problems: NewProblems) -> None:
    kustomization = root / "docker" / "k8s" / "kustomization.yaml"
    found = new_problems(root, "k8s", lambda: edit(kustomization, "  - pdb.yaml\n", ""))
    assert any("pdb.yaml is not listed in resources" in p for p in found), found
    assert any("no PodDisruptionBudget selects its pods" in p for p in found), found


# --- the parsers the checks rely on -------------------------------------------------------------


def test_adapter_variables_follow_every_way_config_reads_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "config.py"
    config.write_text(
        textwrap.dedent(
            """
            import os
            def load_settings(env):
                a = env.get("GRPC_HOST", "")
                b = _parse(env, "GRPC_PORT", 1, int, "a port")
                c = _flag(env, "GRPC_USE_TLS")
                d = env["GRPC_API_KEY"] if "GRPC_ADMIN_API_KEY" in env else None
                e = os.environ.get("LOG_LEVEL")
                f = os.getenv("METRICS_PORT")
                g = {"not": "a variable"}.get("lowercase")
            """
        )
    )
    assert check_deploy.adapter_variables(config) == {
        "GRPC_HOST",
        "GRPC_PORT",
        "GRPC_USE_TLS",
        "GRPC_API_KEY",
        "GRPC_ADMIN_API_KEY",
        "LOG_LEVEL",
        "METRICS_PORT",
    }


def test_adapter_variables_are_the_declared_settings() -> None:
    from adapter.config import SETTINGS

    config = REPO / "adapter" / "config.py"
    assert check_deploy.adapter_variables(config) == {declared.env for declared in SETTINGS}


def test_a_new_declaration_is_a_variable_the_deployment_may_set(root: Path, new_problems: NewProblems) -> None:
    compose, config = root / "docker-compose.grpc.yml", root / "adapter" / "config.py"
    setting = "GRPC_HOST: 0.0.0.0\n      EXTRA_KNOB: '2'\n"
    found = new_problems(root, "compose", lambda: edit(compose, "GRPC_HOST: 0.0.0.0\n", setting))
    assert any("adapter sets EXTRA_KNOB, which adapter/config.py does not read" in p for p in found), found
    declared = '    log_level: str = setting(\n        "LOG_LEVEL",'
    knob = '    extra_knob: int = setting("EXTRA_KNOB", 1, _positive_int, _INT, "a knob")\n' + declared
    assert new_problems(root, "compose", lambda: edit(config, declared, knob)) == []


def test_interpolation_follows_compose() -> None:
    errors: list[str] = []
    document = {"a": "${A:-x}", "b": "${B-y}", "c": ["$$HOME", "${C}"], "d": "${D:?needed}", "n": 3}
    assert check_deploy.interpolate(document, {"B": ""}, errors) == {
        "a": "x",
        "b": "",
        "c": ["$HOME", ""],
        "d": "",
        "n": 3,
    }
    assert errors == ["required variable D is not set: needed"]


def test_pip_requirements_reads_continued_run_lines(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM x\n# comment\nRUN set -eu; \\\n    PIP_X=1 python3 -m pip install --no-cache-dir \\\n"
        "        --extra-index-url https://example.invalid/simple \\\n        torch==2.13.0 \\\n"
        "        tritonclient[grpc]==2.73.0 \\\n        numpy\n"
    )
    found = [(r.line, r.name, r.version) for r in check_deploy.pip_requirements(dockerfile)]
    assert found == [(3, "torch", "2.13.0"), (3, "tritonclient", "2.73.0"), (3, "numpy", None)]


# --- gpu: the Triton image builds on NVIDIA's base, and its torch sees the GPU ---------------------


def test_gpu_catches_the_stack_installed_into_debians_python(root: Path, new_problems: NewProblems) -> None:
    """Item 1 of issue 16: torch 2.13 needs setuptools>=77.0.3; the base's is Debian's 68.1.2."""
    dockerfile = root / "docker" / "triton.Dockerfile"
    found = new_problems(root, "gpu", lambda: edit(dockerfile, "    PATH=/opt/inference/venv/bin:${PATH} \\\n", ""))
    assert any("requires setuptools>=77.0.3" in p and "installed by Debian" in p for p in found), found


def test_gpu_accepts_setuptools_put_first_with_ignore_installed(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "triton.Dockerfile"

    def system_python_with_setuptools_first() -> None:
        edit(dockerfile, "    PATH=/opt/inference/venv/bin:${PATH} \\\n", "")
        edit(
            dockerfile,
            "# torch first, alone,",
            "RUN python3 -m pip install --no-cache-dir --ignore-installed setuptools==80.9.0\n\n# torch first, alone,",
        )

    found = new_problems(root, "gpu", system_python_with_setuptools_first)
    assert not [p for p in found if "setuptools" in p], found


def test_gpu_catches_torch_from_pypi_on_a_cuda_12_base(root: Path, new_problems: NewProblems) -> None:
    """Item 2: PyPI's torch 2.13.0 is CUDA 13 (driver R580+): on the base's driver it sees no GPU."""
    dockerfile = root / "docker" / "triton.Dockerfile"
    found = new_problems(root, "gpu", lambda: edit(dockerfile, ' --index-url "${TORCH_INDEX_URL}" \\', " \\"))
    assert any("from PyPI is built for CUDA 13.0" in p and "CUDA 12.8" in p for p in found), found


def test_gpu_catches_an_index_for_another_cuda(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "triton.Dockerfile"
    found = new_problems(root, "gpu", lambda: edit(dockerfile, "whl/cu128\n", "whl/cu130\n"))
    assert any("(CUDA 13.0) but tritonserver:25.01-py3 is CUDA 12.8" in p for p in found), found
    assert any("ARG TORCH_CUDA=12.8 but torch is installed for CUDA 13.0" in p for p in found), found


def test_gpu_catches_a_base_image_changed_alone(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "triton.Dockerfile"
    found = new_problems(root, "gpu", lambda: edit(dockerfile, "tritonserver:25.01-py3\n", "tritonserver:25.08-py3\n"))
    assert any("is CUDA 13.0: change them together" in p for p in found), found
    assert any("CUDA 13.0 needs R580" in p for p in found), found


def test_gpu_catches_a_silent_cpu_fallback(root: Path, new_problems: NewProblems) -> None:
    dockerfile = root / "docker" / "triton.Dockerfile"
    found = new_problems(root, "gpu", lambda: edit(dockerfile, "    INFERENCE_REQUIRE_CUDA=1 \\\n", ""))
    assert any("does not set ENV INFERENCE_REQUIRE_CUDA=1" in p for p in found), found


def test_compose_catches_a_build_arg_that_unpairs_torch_from_the_base(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(
        root,
        "compose",
        lambda: edit(
            compose,
            "      dockerfile: docker/triton.Dockerfile\n",
            "      dockerfile: docker/triton.Dockerfile\n      args:\n        TORCH_INDEX_URL: ${TORCH_INDEX_URL:-}\n",
        ),
    )
    assert any("build arg TORCH_INDEX_URL=''" in p for p in found), found


def test_compose_catches_tritons_http_open_on_the_network(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(root, "compose", lambda: edit(compose, "      - --http-address=127.0.0.1\n", "", count=2))
    assert any("triton: HTTP listens on 0.0.0.0 with model control open" in p for p in found), found


def test_k8s_catches_a_named_target_port_only_a_sidecar_declares(root: Path, new_problems: NewProblems) -> None:
    """Item 6: such a name resolves to no endpoint before Kubernetes 1.32 (kubernetes#127958)."""
    service = root / "docker" / "k8s" / "service.yaml"
    found = new_problems(
        root, "k8s", lambda: edit(service, "      targetPort: 8002\n", "      targetPort: triton-metrics\n")
    )
    assert any("targetPort 'triton-metrics' is declared only by a native sidecar" in p for p in found), found


def test_k8s_catches_tritons_model_control_on_the_pod_address(root: Path, new_problems: NewProblems) -> None:
    manifest = root / "docker" / "k8s" / "statefulset.yaml"
    found = new_problems(root, "k8s", lambda: edit(manifest, "            - --http-address=127.0.0.1\n", ""))
    assert any("Triton's HTTP listens on 0.0.0.0 with model control open" in p for p in found), found


def test_k8s_catches_a_kubelet_probe_of_a_loopback_port(root: Path, new_problems: NewProblems) -> None:
    manifest = root / "docker" / "k8s" / "statefulset.yaml"

    def http_get_probe() -> None:
        text = manifest.read_text()
        start = text.index("          livenessProbe:\n            exec:")
        end = text.index("periodSeconds: 15", start)
        manifest.write_text(
            text[:start]
            + "          livenessProbe:\n            httpGet:\n              path: /v2/health/live\n"
            + "              port: 8000\n            "
            + text[end:]
        )

    found = new_problems(root, "k8s", http_get_probe)
    assert any("livenessProbe connects to port 8000 from the kubelet" in p for p in found), found


def test_k8s_catches_metrics_on_the_loopback(root: Path, new_problems: NewProblems) -> None:
    manifest = root / "docker" / "k8s" / "statefulset.yaml"
    found = new_problems(
        root, "k8s", lambda: edit(manifest, "--metrics-address=0.0.0.0\n", "--metrics-address=127.0.0.1\n")
    )
    assert any("metrics listen on 127.0.0.1: Prometheus cannot scrape them" in p for p in found), found


# --- vllm: `llm` on Triton's vLLM backend (docker/vllm/, compose profile vllm) -------------------


def test_vllm_catches_an_image_of_another_release_than_the_base(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(
        root, "vllm", lambda: edit(compose, "tritonserver:25.01-vllm-python-py3", "tritonserver:25.08-vllm-python-py3")
    )
    assert any("the vLLM image is release 25.08 but docker/triton.Dockerfile's base is 25.01" in p for p in found), (
        found
    )


def test_vllm_catches_a_model_without_a_tokenizer(root: Path, new_problems: NewProblems) -> None:
    config = root / "docker" / "vllm" / "model_repository" / "llm" / "config.pbtxt"
    found = new_problems(root, "vllm", lambda: edit(config, 'key: "tokenizer"', 'key: "tokeniser"'))
    assert any("no tokenizer parameter: the adapter cannot render chat templates" in p for p in found), found


def test_vllm_catches_a_tokenizer_of_another_model(root: Path, new_problems: NewProblems) -> None:
    engine = root / "docker" / "vllm" / "model_repository" / "llm" / "1" / "model.json"
    found = new_problems(
        root, "vllm", lambda: edit(engine, '"Qwen/Qwen2.5-0.5B-Instruct"', '"Qwen/Qwen2.5-7B-Instruct"')
    )
    assert any("is not the tokenizer vLLM loads ('Qwen/Qwen2.5-7B-Instruct'" in p for p in found), found


def test_vllm_catches_auto_complete_turned_off(root: Path, new_problems: NewProblems) -> None:
    patch = root / "docker" / "vllm" / "statefulset-patch.yaml"
    found = new_problems(
        root,
        "vllm",
        lambda: edit(
            patch,
            "            - --model-control-mode=explicit\n",
            "            - --model-control-mode=explicit\n            - --disable-auto-complete-config\n",
        ),
    )
    assert any("the overlay's Triton: --disable-auto-complete-config leaves the vLLM model" in p for p in found), found


def test_vllm_catches_an_adapter_reading_another_repository(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    found = new_problems(
        root,
        "vllm",
        lambda: edit(
            compose,
            "./docker/vllm/model_repository}:/app/model_repository:ro",
            "./model_repository}:/app/model_repository:ro",
        ),
    )
    assert any(
        "adapter-vllm: its MODEL_REPOSITORY (/app/model_repository) must be the repository Triton serves" in p
        for p in found
    ), found


def test_vllm_catches_a_configmap_item_at_the_wrong_path(root: Path, new_problems: NewProblems) -> None:
    patch = root / "docker" / "vllm" / "statefulset-patch.yaml"
    found = new_problems(root, "vllm", lambda: edit(patch, "path: llm/1/model.json", "path: llm/model.json"))
    assert any("triton: /models does not hold docker/vllm/model_repository/llm/1/model.json" in p for p in found), found
    assert any(
        "adapter: /app/model_repository does not hold docker/vllm/model_repository/llm/1/model.json" in p for p in found
    ), found


def test_vllm_renders_the_overlay_and_validates_it_strictly(root: Path, new_problems: NewProblems) -> None:
    patch = root / "docker" / "vllm" / "statefulset-patch.yaml"
    found = new_problems(
        root, "vllm", lambda: edit(patch, "              readOnly: true", "              readonly: true", count=2)
    )
    assert any("rendered StatefulSet/inference (Kubernetes 1.29, strict)" in p and "readonly" in p for p in found), (
        found
    )


def test_vllm_holds_the_overlay_to_the_base_checks_with_vllms_variables(root: Path, new_problems: NewProblems) -> None:
    patch = root / "docker" / "vllm" / "statefulset-patch.yaml"
    found = new_problems(
        root,
        "vllm",
        lambda: edit(
            patch,
            "            - name: HOME\n",
            "            - name: LLM_MAX_TOKENS\n              value: '1'\n            - name: HOME\n",
        ),
    )
    assert any("Triton gets LLM_MAX_TOKENS, which neither the models nor huggingface/torch read" in p for p in found), (
        found
    )
    # What vLLM reads is allowed (HOME, VLLM_*), and the variables only our models read were deleted.
    assert not any("HOME" in p or "LLM_MODEL_ID" in p for p in found), found


# --- the OpenAI-compatible HTTP port --------------------------------------------------------------


def test_compose_catches_the_http_port_left_unpublished(root: Path, new_problems: NewProblems) -> None:
    compose = root / "docker-compose.grpc.yml"
    published = '      - "${ADAPTER_PUBLISH_ADDRESS:-0.0.0.0}:${OPENAI_HTTP_PORT:-8080}:${OPENAI_HTTP_PORT:-8080}"\n'
    found = new_problems(root, "compose", lambda: edit(compose, published, ""))
    assert any("the OpenAI HTTP port 8080 (OPENAI_HTTP_PORT) is not published" in p for p in found), found


def test_k8s_catches_the_http_port_undeclared_unserviced_or_blocked(root: Path, new_problems: NewProblems) -> None:
    k8s = root / "docker" / "k8s"
    container_port = "            - name: http\n              containerPort: 8080\n              protocol: TCP\n"
    found = new_problems(root, "k8s", lambda: edit(k8s / "statefulset.yaml", container_port, ""))
    assert any("serves HTTP on 8080 (OPENAI_HTTP_PORT) but declares no such port" in p for p in found), found
    found = new_problems(
        root, "k8s", lambda: edit(k8s / "service.yaml", "      targetPort: 8080\n", "      targetPort: 8081\n")
    )
    assert any("no Service targets the adapter's HTTP port 8080" in p for p in found), found
    found = new_problems(
        root, "k8s", lambda: edit(k8s / "networkpolicy.yaml", "        - port: 8080\n          protocol: TCP\n", "")
    )
    assert any("NetworkPolicy does not let clients reach HTTP port 8080" in p for p in found), found
