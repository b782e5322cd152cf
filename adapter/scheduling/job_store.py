"""Image jobs on disk: one SQLite table and a folder of PNG files per finished job.

All SQLite and file work runs on one dedicated thread, so the event loop never blocks on disk and
the connection is only ever used from the thread that made it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

INTERRUPTED = "interrupted by restart"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    image_sizes TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    finished_at REAL
)
"""
# Idempotent submission: the client's request_id and a digest of what it asked for. Added to stores
# made before them; the unique index makes a second job under one request_id impossible.
_REQUEST_ID_COLUMNS = (("request_id", "TEXT"), ("fingerprint", "TEXT NOT NULL DEFAULT ''"))
_REQUEST_ID_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL"
)


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    model: str
    state: str  # queued | running | succeeded | failed
    step: int
    total_steps: int
    error: str
    image_sizes: list[tuple[int, int]]
    created_at: float
    finished_at: float | None


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        kind=row["kind"],
        model=row["model"],
        state=row["state"],
        step=row["step"],
        total_steps=row["total_steps"],
        error=row["error"],
        image_sizes=[(w, h) for w, h in json.loads(row["image_sizes"])],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )


class JobStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> int:
        """Opens (or creates) the store; jobs left queued or running by the last process end failed.
        Returns how many were interrupted."""
        return int(await self._run(self._open))

    def _open(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.directory / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: no fsync per state change (each cost ~20 ms here); a power cut can lose the
        # last few changes but never corrupts the table, and lost running jobs end "interrupted".
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _REQUEST_ID_COLUMNS:
            if name not in columns:
                db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        db.execute(_REQUEST_ID_INDEX)
        self._db = db
        interrupted = [row["id"] for row in db.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')")]
        db.execute(
            "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE state IN ('queued', 'running')",
            (INTERRUPTED, time.time()),
        )
        for job_id in interrupted:
            shutil.rmtree(self._job_dir(job_id), ignore_errors=True)  # a half-written result
        return len(interrupted)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(_close)
        self._executor.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "JobStore.open() first"
        return self._db

    def _job_dir(self, job_id: str) -> Path:
        return self.directory / job_id

    async def create(
        self,
        job_id: str,
        kind: str,
        model: str,
        created_at: float,
        request_id: str | None = None,
        fingerprint: str = "",
    ) -> None:
        await self._run(
            lambda: self.db.execute(
                "INSERT INTO jobs (id, kind, model, state, created_at, request_id, fingerprint) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, kind, model, created_at, request_id, fingerprint),
            )
        )

    async def find_request(self, request_id: str) -> tuple[str, str] | None:
        """(job id, fingerprint) of the job submitted under the client's request_id, if still kept."""

        def _find() -> tuple[str, str] | None:
            row = self.db.execute("SELECT id, fingerprint FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
            return (row["id"], row["fingerprint"]) if row else None

        result: tuple[str, str] | None = await self._run(_find)
        return result

    async def mark_running(self, job_id: str) -> None:
        await self._run(lambda: self.db.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (job_id,)))

    async def fail(self, job_id: str, error: str, step: int, total_steps: int) -> None:
        await self._run(
            lambda: self.db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, step = ?, total_steps = ?, finished_at = ? WHERE id = ?",
                (error, step, total_steps, time.time(), job_id),
            )
        )

    async def cancel(self, job_id: str, error: str, step: int, total_steps: int) -> None:
        """Fails the job with `error` and frees its request_id: a retry under the same id after the
        client gave up starts a new job instead of finding this one."""
        await self._run(
            lambda: self.db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, step = ?, total_steps = ?, finished_at = ?, "
                "request_id = NULL WHERE id = ?",
                (error, step, total_steps, time.time(), job_id),
            )
        )

    async def succeed(self, job_id: str, pngs: list[bytes], sizes: list[tuple[int, int]], total_steps: int) -> None:
        await self._run(self._succeed, job_id, pngs, sizes, total_steps)

    def _succeed(self, job_id: str, pngs: list[bytes], sizes: list[tuple[int, int]], total_steps: int) -> None:
        # Files first, in a temporary folder renamed into place: a crash never leaves a
        # "succeeded" row without its images, nor a half-written folder under the job's name.
        final = self._job_dir(job_id)
        partial = self.directory / f".{job_id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for i, png in enumerate(pngs):
            (partial / f"{i}.png").write_bytes(png)
        partial.rename(final)
        self.db.execute(
            "UPDATE jobs SET state = 'succeeded', step = ?, total_steps = ?, image_sizes = ?, finished_at = ? "
            "WHERE id = ?",
            (total_steps, total_steps, json.dumps(sizes), time.time(), job_id),
        )

    async def get(self, job_id: str) -> JobRecord | None:
        def _get() -> JobRecord | None:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return _record(row) if row else None

        result: JobRecord | None = await self._run(_get)
        return result

    async def images(self, job: JobRecord) -> list[bytes]:
        def _read() -> list[bytes]:
            return [(self._job_dir(job.id) / f"{i}.png").read_bytes() for i in range(len(job.image_sizes))]

        result: list[bytes] = await self._run(_read)
        return result

    async def remove_expired(self, older_than: float) -> list[str]:
        """Deletes finished jobs (and their files) that finished before `older_than`; only those."""

        def _sweep() -> list[str]:
            expired = [
                row["id"]
                for row in self.db.execute(
                    "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed') AND finished_at < ?", (older_than,)
                )
            ]
            for job_id in expired:
                shutil.rmtree(self._job_dir(job_id), ignore_errors=True)
                self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return expired

        result: list[str] = await self._run(_sweep)
        return result
