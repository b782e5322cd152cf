"""Processes as Linux's /proc shows them: liveness, parents and children, command lines, memory.

One place for what the adapter (the embedded Triton's stubs, waiting for an unloaded model's stub to
exit, stale shared memory) and the tests' harness need to know about processes. A process that has
exited but that its parent has not reaped yet (a zombie) is gone: it runs no code and holds no memory.

Every function takes the /proc directory as `proc`, so the tests can hand it a fake one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
# /proc/PID/stat states of a process that has exited: zombie, dead.
_EXITED = frozenset({"Z", "X", "x"})
# The python backend's stub: one process per model instance, a child of tritonserver.
STUB_MARKER = b"triton_python_backend_stub"


def _stat_fields(pid: int, proc: Path) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses):
    [0] is the state, [1] the parent's pid. None when there is no such process."""
    try:
        text = (proc / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    _, closed, rest = text.rpartition(")")
    fields = rest.split()
    return fields if closed and len(fields) >= 2 else None


def alive(pid: int, proc: Path = PROC) -> bool:
    """True while the process runs; an exited one awaiting its parent's wait (a zombie) is gone."""
    fields = _stat_fields(pid, proc)
    return fields is not None and fields[0] not in _EXITED


def all_pids(proc: Path = PROC) -> list[int]:
    """Every process /proc lists now."""
    return [int(entry.name) for entry in proc.glob("[0-9]*") if entry.name.isdigit()]


def parent_of(pid: int, proc: Path = PROC) -> int | None:
    fields = _stat_fields(pid, proc)
    if fields is None:
        return None
    try:
        return int(fields[1])
    except ValueError:
        return None


def children(pid: int, proc: Path = PROC) -> set[int]:
    """The processes whose parent is `pid`."""
    return {child for child in all_pids(proc) if parent_of(child, proc) == pid}


def descendants(pid: int, proc: Path = PROC) -> set[int]:
    """Children, their children and so on (one pass over /proc)."""
    by_parent: dict[int, list[int]] = {}
    for child in all_pids(proc):
        parent = parent_of(child, proc)
        if parent is not None:
            by_parent.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int, proc: Path = PROC) -> bytes:
    """The command line, arguments separated by NUL bytes; b"" when gone (a zombie's is empty too)."""
    try:
        return (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def comm(pid: int, proc: Path = PROC) -> str:
    """The process's name (its executable's, at most 15 characters); "" when gone."""
    try:
        return (proc / str(pid) / "comm").read_text(errors="replace").strip()
    except OSError:
        return ""


def stub_pids(candidates: Iterable[int], marker: str, proc: Path = PROC) -> set[int]:
    """Those of `candidates` that are running python-backend stubs whose command line contains
    `marker` (a model's directory, say): the processes serving that model."""
    found = set()
    for pid in candidates:
        line = cmdline(pid, proc)
        if STUB_MARKER in line and marker.encode() in line and alive(pid, proc):
            found.add(pid)
    return found


def rss_bytes(pids: Iterable[int], proc: Path = PROC) -> int:
    """Resident memory of the processes together (VmRSS); a process that is gone holds none."""
    total = 0
    for pid in pids:
        try:
            status = (proc / str(pid) / "status").read_text(errors="replace")
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total
