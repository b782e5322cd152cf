"""The image job store on a real SQLite file: life cycle, restart, retention."""

from __future__ import annotations

import time
from pathlib import Path

from adapter.job_store import INTERRUPTED, JobStore


async def test_a_finished_job_keeps_its_images_and_sizes(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    await store.open()
    await store.create("a", "generate", "image", time.time())
    await store.mark_running("a")
    await store.succeed("a", [b"png-0", b"png-1"], [(64, 32), (64, 32)], total_steps=5)
    record = await store.get("a")
    assert record is not None and record.state == "succeeded"
    assert (record.step, record.total_steps, record.image_sizes) == (5, 5, [(64, 32), (64, 32)])
    assert await store.images(record) == [b"png-0", b"png-1"]
    assert record.finished_at is not None
    await store.close()


async def test_reopening_fails_queued_and_running_jobs_and_keeps_finished_ones(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    await store.open()
    for job_id in ("queued", "running", "done", "failed"):
        await store.create(job_id, "generate", "image", time.time())
    await store.mark_running("running")
    await store.succeed("done", [b"x"], [(8, 8)], 1)
    await store.fail("failed", "model said no", 0, 0)
    await store.close()

    reopened = JobStore(tmp_path)
    assert await reopened.open() == 2
    states = {job_id: await reopened.get(job_id) for job_id in ("queued", "running", "done", "failed")}
    assert {k: (v.state, v.error) for k, v in states.items() if v} == {
        "queued": ("failed", INTERRUPTED),
        "running": ("failed", INTERRUPTED),
        "done": ("succeeded", ""),
        "failed": ("failed", "model said no"),
    }
    await reopened.close()


async def test_retention_removes_exactly_the_jobs_finished_before_the_cut(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    await store.open()
    await store.create("old", "generate", "image", time.time())
    await store.succeed("old", [b"x"], [(8, 8)], 1)
    await store.create("old-failed", "generate", "image", time.time())
    await store.fail("old-failed", "no", 0, 0)
    cut = time.time()
    await store.create("new", "generate", "image", time.time())
    await store.succeed("new", [b"y"], [(8, 8)], 1)
    await store.create("still-running", "generate", "image", time.time() - 10_000)
    await store.mark_running("still-running")

    assert sorted(await store.remove_expired(cut)) == ["old", "old-failed"]
    assert await store.get("old") is None and not (tmp_path / "old").exists()
    assert await store.get("new") is not None and (tmp_path / "new" / "0.png").exists()
    running = await store.get("still-running")
    assert running is not None and running.state == "running"  # never expires while unfinished
    assert await store.remove_expired(cut) == []
    await store.close()
