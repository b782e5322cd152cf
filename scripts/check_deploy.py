#!/usr/bin/env python3
"""Static checks of the deployment files, offline: `make check-deploy`.

The entry point; the checks live in scripts/deploy_checks/, one module per check (hadolint,
compose, k8s, drift, gpu, vllm): see that package's docstring for what each one asserts.

Usage: python scripts/check_deploy.py [--root DIR] [--only hadolint,compose,k8s,drift,gpu,vllm]
Exit status 0 when every check passes, 1 when any problem is found, 2 when a tool is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, scripts/ is on sys.path already; loaded from its path (the tests), it is not.
_SCRIPTS = str(Path(__file__).resolve().parent)
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

from deploy_checks import (  # noqa: E402 - after the path it is found on
    CHECKS,
    REPO_ROOT,
    Paths,
    Report,
    ToolMissing,
    _kubernetes_validate,
    adapter_variables,
    compose_schema,
    find_hadolint,
    interpolate,
    main,
    model_variables,
    pip_requirements,
    run,
)

__all__ = [
    "CHECKS",
    "REPO_ROOT",
    "Paths",
    "Report",
    "ToolMissing",
    "_kubernetes_validate",
    "adapter_variables",
    "compose_schema",
    "find_hadolint",
    "interpolate",
    "main",
    "model_variables",
    "pip_requirements",
    "run",
]

if __name__ == "__main__":
    sys.exit(main())
