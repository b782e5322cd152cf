"""Static checks of the deployment files, offline: `make check-deploy`.

The command line over the checks (one module each in this package): which ones run, the report,
the exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from .common import REPO_ROOT, Paths, Report, ToolMissing
from .compose import check_compose
from .drift import check_drift
from .gpu import check_gpu_image
from .hadolint import check_hadolint
from .k8s import check_k8s
from .vllm import check_vllm

CHECKS: dict[str, Callable[[Paths, Report], None]] = {
    "hadolint": lambda paths, report: check_hadolint([paths.triton_dockerfile, paths.adapter_dockerfile], report),
    "compose": check_compose,
    "k8s": check_k8s,
    "drift": check_drift,
    "gpu": check_gpu_image,
    "vllm": check_vllm,
}


def run(paths: Paths, only: Iterable[str] = CHECKS) -> list[str]:
    report = Report(root=paths.root)
    for name in only:
        CHECKS[name](paths, report)
    return report.problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in selected if name not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s): {', '.join(unknown)}")
    try:
        problems = run(Paths.of(args.root.resolve()), selected)
    except ToolMissing as err:
        print(f"check-deploy: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    if problems:
        print(f"check-deploy: {len(problems)} problem(s) in {', '.join(selected)}", file=sys.stderr)
        return 1
    print(f"check-deploy: ok ({', '.join(selected)})")
    return 0
