"""k8s: every manifest in docker/k8s against the Kubernetes schemas bundled in kubernetes-validate
(strict: unknown fields are errors), for the oldest Kubernetes the manifests support and the newest
bundled; then the kustomization, the GPU limit, the probes, /dev/shm, the headless Service, the
PodDisruptionBudget, scrape annotations, Triton's model control kept on the loopback or restricted
(and no kubelet probe aimed at a loopback port), no Service targetPort that only a native sidecar
declares (kubernetes#127958, before 1.32), and the variables each container gets (drift)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .common import Paths, Report, ToolMissing, load_yaml, load_yaml_documents
from .sources import TRITON_THIRD_PARTY_VARIABLES, adapter_variables, model_variables, option_values

# Kubernetes versions the manifests are validated against: 1.29 is the oldest that runs native
# sidecar containers (Triton is one) by default; "latest" is the newest the installed
# kubernetes-validate bundles.
K8S_VERSIONS = ("1.29.0", "latest")


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate.utils as kv
    except ImportError as err:
        raise ToolMissing("kubernetes-validate not installed (pyproject.toml's dev extras)") from err
    if not hasattr(kv.schema_contents, "cache_info"):
        # validate() re-reads and re-parses the (large) schema files on every call; they never
        # change while we run, and jsonschema does not modify them: read each once.
        kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)
    return kv


def check_k8s(paths: Paths, report: Report) -> None:
    kv = _kubernetes_validate()
    kustomization_path = paths.k8s / "kustomization.yaml"
    resources: list[tuple[Path, dict[str, Any]]] = []
    if not kustomization_path.is_file():
        report.add("k8s", paths.k8s, "no kustomization.yaml (kubectl apply -k docker/k8s)")
        listed: list[str] = [p.name for p in sorted(paths.k8s.glob("*.yaml"))]
    else:
        kustomization = load_yaml(kustomization_path) or {}
        listed = [str(item) for item in kustomization.get("resources") or []]
        on_disk = {p.name for p in paths.k8s.glob("*.yaml")} - {"kustomization.yaml"}
        for name in sorted(on_disk - set(listed)):
            report.add("k8s", kustomization_path, f"{name} is not listed in resources (it would never be applied)")
    for name in listed:
        path = paths.k8s / name
        if not path.is_file():
            report.add("k8s", kustomization_path, f"resource {name} does not exist")
            continue
        try:
            documents = load_yaml_documents(path)
        except yaml.YAMLError as err:
            report.add("k8s", path, f"not valid YAML: {err}")
            continue
        for document in documents:
            if not isinstance(document, dict) or "kind" not in document or "apiVersion" not in document:
                report.add("k8s", path, "a document without apiVersion/kind")
                continue
            resources.append((path, document))
    versions = [kv.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    for path, document in resources:
        label = f"{document['kind']}/{(document.get('metadata') or {}).get('name', '?')}"
        for version in versions:
            try:
                kv.validate(document, version, strict=True)
            except kv.ValidationError as err:
                where = ".".join(str(part) for part in err.path) or "(top level)"
                report.add("k8s", path, f"{label} (Kubernetes {err.version}, strict): {where}: {err.message}")
                break
            except kv.SchemaNotFoundError as err:
                report.add("k8s", path, f"{label}: {err.message}")
                break
    _check_k8s_semantics(paths, resources, report)


def _containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    # Native sidecars (init containers with restartPolicy Always) run for the pod's whole life.
    sidecars = [c for c in pod_spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return [*sidecars, *(pod_spec.get("containers") or [])]


def _matches(selector: Mapping[str, Any] | None, labels: Mapping[str, Any]) -> bool:
    if not selector:
        return False
    wanted = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())


def _check_k8s_semantics(
    paths: Paths,
    resources: list[tuple[Path, dict[str, Any]]],
    report: Report,
    triton_variables: Callable[[str], bool] | None = None,
) -> None:
    """`triton_variables`: which variables Triton's container may get (default: the ones our models
    and huggingface/torch read)."""
    workloads = [(p, d) for p, d in resources if d.get("kind") in ("StatefulSet", "Deployment")]
    if not workloads:
        report.add("k8s", paths.k8s, "no StatefulSet or Deployment")
        return
    config_maps = {
        (d.get("metadata") or {}).get("name"): d.get("data") or {} for _, d in resources if d.get("kind") == "ConfigMap"
    }
    read = adapter_variables(paths.adapter_config)
    model_read = model_variables(paths.model_repository, paths.model_runtime) | TRITON_THIRD_PARTY_VARIABLES
    allowed = triton_variables or model_read.__contains__
    for path, workload in workloads:
        spec = workload.get("spec") or {}
        template = spec.get("template") or {}
        pod_labels = (template.get("metadata") or {}).get("labels") or {}
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        pod_spec = template.get("spec") or {}
        name = f"{workload['kind']}/{(workload.get('metadata') or {}).get('name')}"
        if annotations.get("prometheus.io/scrape") != "true" or not annotations.get("prometheus.io/port"):
            report.add(
                "k8s", path, f"{name}: pod template lacks prometheus.io/scrape and prometheus.io/port annotations"
            )
        containers = _containers(pod_spec)
        triton = [
            c for c in containers if "tritonserver" in " ".join(map(str, c.get("args") or c.get("command") or []))
        ]
        adapters = [c for c in containers if c not in triton]
        if len(triton) != 1:
            report.add("k8s", path, f"{name}: expected one tritonserver container, found {len(triton)}")
        if len(adapters) != 1:
            report.add("k8s", path, f"{name}: expected one adapter container beside Triton, found {len(adapters)}")
        volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
        for container in triton:
            limits = (container.get("resources") or {}).get("limits") or {}
            if str(limits.get("nvidia.com/gpu", "0")) in ("0", ""):
                report.add("k8s", path, f"{name}: Triton has no nvidia.com/gpu limit (one pod per GPU)")
            args = [str(a) for a in container.get("args") or container.get("command") or []]
            if "--model-control-mode=explicit" not in args:
                report.add("k8s", path, f"{name}: Triton lacks --model-control-mode=explicit")
            probe = container.get("readinessProbe") or {}
            asks = (probe.get("httpGet") or {}).get("path") or " ".join(
                map(str, (probe.get("exec") or {}).get("command") or [])
            )
            if "/v2/health/ready" not in str(asks):
                report.add("k8s", path, f"{name}: Triton's readinessProbe must ask /v2/health/ready")
            _check_triton_exposure(path, name, container, args, report)
            shm = [m for m in container.get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"]
            shm_volume = volumes.get(shm[0].get("name")) if shm else None
            if not shm_volume or (shm_volume.get("emptyDir") or {}).get("medium") != "Memory":
                report.add("k8s", path, f"{name}: Triton needs /dev/shm from an emptyDir with medium: Memory")
            for variable in _env_names(container, config_maps):
                if not allowed(variable):
                    report.add(
                        "drift",
                        path,
                        f"{name}: Triton gets {variable}, which neither the models nor huggingface/torch read",
                    )
        http_ports: set[str] = set()
        for container in adapters:
            for kind in ("readinessProbe", "startupProbe"):
                if "grpc" not in (container.get(kind) or {}):
                    report.add("k8s", path, f"{name}: the adapter's {kind} must be a grpc probe (grpc.health.v1)")
            environment = _env_names(container, config_maps)
            for variable in sorted(environment - read):
                report.add("drift", path, f"{name}: the adapter gets {variable}, which adapter/config.py does not read")
            values = {e.get("name"): e.get("value") for e in container.get("env") or []}
            if not str(values.get("TRITON_URL", "")).endswith(":8001"):
                report.add("k8s", path, f"{name}: the adapter's TRITON_URL must point at Triton's gRPC port 8001")
            http_port = str(values.get("OPENAI_HTTP_PORT", "8080"))
            if http_port != "0":
                http_ports.add(http_port)
                declared = {str(p.get("containerPort")) for p in container.get("ports") or []}
                if http_port not in declared:
                    report.add(
                        "k8s",
                        path,
                        f"{name}: the adapter serves HTTP on {http_port} (OPENAI_HTTP_PORT) but declares no such port",
                    )
        _check_k8s_services(paths, resources, pod_labels, name, report, pod_spec)
        _check_http_exposure(paths, resources, pod_labels, name, http_ports, report)


def _env_names(container: Mapping[str, Any], config_maps: Mapping[Any, Mapping[str, Any]]) -> set[str]:
    names = {str(e.get("name")) for e in container.get("env") or []}
    for source in container.get("envFrom") or []:
        ref = (source.get("configMapRef") or {}).get("name")
        names |= {str(key) for key in config_maps.get(ref, {})}
    return names


def _check_http_exposure(
    paths: Paths,
    resources: list[tuple[Path, dict[str, Any]]],
    pod_labels: Mapping[str, Any],
    name: str,
    http_ports: set[str],
    report: Report,
) -> None:
    """The OpenAI HTTP port is reachable: a Service targets it and the NetworkPolicy lets it in."""
    for port in sorted(http_ports):
        targeted = {
            str(p.get("targetPort", p.get("port")))
            for _, d in resources
            if d.get("kind") == "Service" and _matches(d["spec"].get("selector"), pod_labels)
            for p in d["spec"].get("ports") or []
        }
        if port not in targeted:
            report.add(
                "k8s", paths.k8s, f"{name}: no Service targets the adapter's HTTP port {port} (OPENAI_HTTP_PORT)"
            )
        policies = [d for _, d in resources if d.get("kind") == "NetworkPolicy"]
        allowed = {
            str(p.get("port"))
            for policy in policies
            for rule in (policy.get("spec") or {}).get("ingress") or []
            for p in rule.get("ports") or []
        }
        if policies and port not in allowed:
            report.add("k8s", paths.k8s, f"{name}: the NetworkPolicy does not let clients reach HTTP port {port}")


def _check_k8s_services(
    paths: Paths,
    resources: list[tuple[Path, dict[str, Any]]],
    pod_labels: Mapping[str, Any],
    name: str,
    report: Report,
    pod_spec: Mapping[str, Any] | None = None,
) -> None:
    pod_spec = pod_spec or {}
    services = [
        d for _, d in resources if d.get("kind") == "Service" and _matches(d["spec"].get("selector"), pod_labels)
    ]
    headless = [
        s
        for s in services
        if s["spec"].get("clusterIP") == "None" and any(p.get("port") == 50051 for p in s["spec"].get("ports") or [])
    ]
    if not headless:
        report.add("k8s", paths.k8s, f"{name}: no headless Service (clusterIP: None) on port 50051 selects its pods")
    for service in services:
        _check_target_ports(paths, service, pod_spec, report)
    budgets = [
        d
        for _, d in resources
        if d.get("kind") == "PodDisruptionBudget" and _matches(d["spec"].get("selector"), pod_labels)
    ]
    if not budgets:
        report.add("k8s", paths.k8s, f"{name}: no PodDisruptionBudget selects its pods")


def _check_triton_exposure(
    path: Path, name: str, container: Mapping[str, Any], args: list[str], report: Report
) -> None:
    """Triton's HTTP and gRPC endpoints carry model control (load/unload runs model code): each must
    listen on the pod's loopback or restrict that API; its metrics must stay reachable; and no probe
    of the kubelet (which connects to the pod's address) may target a loopback-only port."""
    loopback = ("127.0.0.1", "localhost", "::1")
    for protocol, restriction, port in (
        ("http", "--http-restricted-api", 8000),
        ("grpc", "--grpc-restricted-protocol", 8001),
    ):
        address = (option_values(args, f"--{protocol}-address") or ["0.0.0.0"])[-1]
        restricted = any("model-repository" in value for value in option_values(args, restriction))
        if address not in loopback and not restricted:
            report.add(
                "k8s",
                path,
                f"{name}: Triton's {protocol.upper()} listens on {address} with model control open: bind it to "
                f"127.0.0.1 (--{protocol}-address) or restrict model-repository ({restriction})",
            )
        if address in loopback:
            bound = {str(port), *(option_values(args, f"--{protocol}-port"))}
            names = {str(p.get("name")) for p in container.get("ports") or [] if str(p.get("containerPort")) in bound}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind) or {}
                target = (probe.get("httpGet") or probe.get("grpc") or probe.get("tcpSocket") or {}).get("port")
                if target is not None and (str(target) in bound or str(target) in names):
                    report.add(
                        "k8s",
                        path,
                        f"{name}: Triton's {kind} connects to port {target} from the kubelet, but {protocol.upper()} "
                        "listens on the pod's loopback only: probe from inside the container (exec)",
                    )
    metrics_address = (option_values(args, "--metrics-address") or ["0.0.0.0"])[-1]
    if metrics_address in loopback:
        report.add("k8s", path, f"{name}: Triton's metrics listen on {metrics_address}: Prometheus cannot scrape them")


def _check_target_ports(paths: Paths, service: Mapping[str, Any], pod_spec: Mapping[str, Any], report: Report) -> None:
    """A named targetPort must be a port of one of the pods' regular containers: Kubernetes resolved
    names declared by a native sidecar (an init container with restartPolicy Always) only from 1.32
    on (kubernetes#127958), and the manifests support 1.29. Numeric target ports always resolve."""
    regular = {str(p.get("name")) for c in pod_spec.get("containers") or [] for p in c.get("ports") or []}
    sidecar = {
        str(p.get("name"))
        for c in pod_spec.get("initContainers") or []
        if c.get("restartPolicy") == "Always"
        for p in c.get("ports") or []
    }
    label = f"Service/{(service.get('metadata') or {}).get('name')}"
    for port in (service.get("spec") or {}).get("ports") or []:
        target = port.get("targetPort")
        if not isinstance(target, str) or target.isdigit() or target in regular:
            continue
        if target in sidecar:
            report.add(
                "k8s",
                paths.k8s,
                f"{label}: targetPort {target!r} is declared only by a native sidecar: Kubernetes before 1.32 "
                "resolves no endpoint for it (kubernetes#127958); use the port number",
            )
        else:
            report.add("k8s", paths.k8s, f"{label}: targetPort {target!r} is no port of the pods' containers")
