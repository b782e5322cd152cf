"""The image job store on a real SQLite file: life cycle, restart, retention."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from adapter.scheduling.job_store import INTERRUPTED, JobStore


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


async def test_a_request_id_finds_its_job_until_retention_removes_it(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    await store.open()
    await store.create("a", "generate", "image", time.time(), "req-1", "digest-a")
    await store.create("b", "generate", "image", time.time())  # no request_id: any number of them
    await store.create("c", "generate", "image", time.time())
    assert await store.find_request("req-1") == ("a", "digest-a")
    assert await store.find_request("req-2") is None
    await store.succeed("a", [b"x"], [(8, 8)], 1)
    await store.remove_expired(time.time() + 1)
    assert await store.find_request("req-1") is None
    await store.close()


async def test_one_request_id_cannot_name_two_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    await store.open()
    await store.create("a", "generate", "image", time.time(), "req-1", "x")
    with pytest.raises(sqlite3.IntegrityError):
        await store.create("b", "generate", "image", time.time(), "req-1", "x")
    await store.close()


async def test_a_store_made_before_request_ids_gains_them_on_open(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "jobs.sqlite3")
    old.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL, "
        "step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', "
        "image_sizes TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL, finished_at REAL)"
    )
    old.execute(
        "INSERT INTO jobs (id, kind, model, state, created_at) VALUES ('old', 'generate', 'image', 'failed', 1)"
    )
    old.commit()
    old.close()
    store = JobStore(tmp_path)
    await store.open()
    assert (await store.get("old")) is not None
    await store.create("new", "generate", "image", time.time(), "req", "d")
    assert await store.find_request("req") == ("new", "d")
    await store.close()
