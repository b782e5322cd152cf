"""adapter.triton.procfs over a fake /proc (and a few checks against the real one)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from adapter.triton import procfs


def add_process(
    proc: Path,
    pid: int,
    parent: int,
    state: str = "S",
    name: str = "python3",
    cmdline: list[str] | None = None,
    rss_kb: int | None = None,
) -> None:
    directory = proc / str(pid)
    directory.mkdir(parents=True)
    # The command name is in parentheses and may itself hold spaces and parentheses.
    (directory / "stat").write_text(f"{pid} ({name}) {state} {parent} {pid} {pid} 0 -1 4194560 0 0\n")
    (directory / "comm").write_text(name[:15] + "\n")
    (directory / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in cmdline or []))
    status = f"Name:\t{name}\nState:\t{state}\n"
    if rss_kb is not None:
        status += f"VmRSS:\t{rss_kb:>8} kB\n"
    (directory / "status").write_text(status)


def stub(model_dir: str) -> list[str]:
    return ["/opt/backends/python/triton_python_backend_stub", f"{model_dir}/1/model.py", "shm_region", "1048576"]


def test_a_zombie_is_not_alive(tmp_path: Path) -> None:
    add_process(tmp_path, 10, 1, state="S")
    add_process(tmp_path, 11, 1, state="R")
    add_process(tmp_path, 12, 1, state="Z")
    add_process(tmp_path, 13, 1, state="X")
    assert procfs.alive(10, tmp_path)
    assert procfs.alive(11, tmp_path)
    assert not procfs.alive(12, tmp_path), "an exited process its parent has not reaped yet is gone"
    assert not procfs.alive(13, tmp_path)
    assert not procfs.alive(99, tmp_path), "no such process"


def test_a_command_name_with_spaces_and_parentheses_is_read_past(tmp_path: Path) -> None:
    add_process(tmp_path, 20, 7, state="Z", name="odd) name (x")
    assert not procfs.alive(20, tmp_path)
    assert procfs.parent_of(20, tmp_path) == 7


def test_an_unreadable_or_truncated_stat_is_a_process_gone(tmp_path: Path) -> None:
    (tmp_path / "30").mkdir()
    (tmp_path / "30" / "stat").write_text("30 (cut")
    assert not procfs.alive(30, tmp_path)
    assert procfs.parent_of(30, tmp_path) is None


def test_children_and_descendants(tmp_path: Path) -> None:
    add_process(tmp_path, 100, 1, name="python")  # the adapter
    add_process(tmp_path, 200, 100, name="tritonserver")
    add_process(tmp_path, 300, 200, cmdline=stub("/repo/llm"))
    add_process(tmp_path, 301, 200, cmdline=stub("/repo/embedding"))
    add_process(tmp_path, 400, 300, name="worker")
    add_process(tmp_path, 500, 1, name="other")
    (tmp_path / "self").mkdir()  # not a process
    assert procfs.children(100, tmp_path) == {200}
    assert procfs.children(200, tmp_path) == {300, 301}
    assert procfs.descendants(100, tmp_path) == {200, 300, 301, 400}
    assert procfs.descendants(500, tmp_path) == set()
    assert procfs.comm(200, tmp_path) == "tritonserver"
    assert procfs.comm(999, tmp_path) == ""


def test_stub_pids_finds_the_running_stubs_of_one_model(tmp_path: Path) -> None:
    add_process(tmp_path, 200, 1, name="tritonserver", cmdline=["tritonserver", "--model-repository=/repo"])
    add_process(tmp_path, 300, 200, cmdline=stub("/repo/llm"))
    add_process(tmp_path, 301, 200, cmdline=stub("/repo/llm"))
    add_process(tmp_path, 302, 200, cmdline=stub("/repo/embedding"))
    add_process(tmp_path, 303, 200, state="Z", cmdline=stub("/repo/llm"))  # exited, not reaped
    add_process(tmp_path, 304, 200, cmdline=["python3", "/repo/llm/1/model.py"])  # not a stub
    candidates = procfs.children(200, tmp_path) | {999}  # 999: gone meanwhile
    assert procfs.stub_pids(candidates, "/repo/llm/", tmp_path) == {300, 301}
    assert procfs.stub_pids(candidates, "/llm/1/model.py", tmp_path) == {300, 301}
    assert procfs.stub_pids(candidates, "/repo/embedding/", tmp_path) == {302}
    assert procfs.stub_pids(candidates, "/repo/image/", tmp_path) == set()


def test_rss_bytes_adds_resident_memory_and_skips_processes_gone(tmp_path: Path) -> None:
    add_process(tmp_path, 10, 1, rss_kb=1000)
    add_process(tmp_path, 11, 1, rss_kb=24)
    add_process(tmp_path, 12, 1, state="Z")  # a zombie's status has no VmRSS
    assert procfs.rss_bytes({10, 11, 12, 99}, tmp_path) == 1024 * 1024


def test_against_the_real_proc() -> None:
    me = os.getpid()
    assert procfs.alive(me)
    assert procfs.parent_of(me) == os.getppid()
    assert procfs.rss_bytes({me}) > 0
    assert procfs.cmdline(me)
    child = subprocess.Popen(["true"])
    try:
        assert child.pid in procfs.children(me)
        deadline = time.monotonic() + 30
        while procfs.alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Exited and not yet waited for: a zombie, which is not alive.
        assert not procfs.alive(child.pid)
        assert child.pid in procfs.all_pids()
    finally:
        child.wait()
    assert not procfs.alive(child.pid)
