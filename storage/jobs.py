"""The training job queue: one queued job per adapter at most, claimed by a worker, taken over when it goes quiet."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from storage.base import StoreBase, now
from storage.errors import NotFound


ERASURE = "erasure"
"""The reason of a global job that retrains from scratch, without a deleted profile's feedback (others: "auto",
"manual")."""


class TrainingJobs(StoreBase):
    def enqueue_job(self, adapter: str, profile_id: str | None, reason: str) -> dict:
        """Queue a training job for an adapter unless one is already queued (then that one is returned)."""
        with self._write() as db:
            if profile_id is not None:
                self._require_profile(db, profile_id)
            queued = self._rows(db, "SELECT * FROM training_jobs WHERE adapter = ? AND status = 'queued'", (adapter,))
            if queued and reason == ERASURE:  # the queued job becomes the from-scratch retrain
                db.execute("UPDATE training_jobs SET reason = ? WHERE id = ?", (ERASURE, queued[0]["id"]))
                queued[0]["reason"] = ERASURE
            if queued:
                return queued[0]
            job_id = self._new_id()
            db.execute("INSERT INTO training_jobs (id, adapter, profile_id, status, reason, created_at) "
                       "VALUES (?, ?, ?, 'queued', ?, ?)", (job_id, adapter, profile_id, reason, now()))
            return self._rows(db, "SELECT * FROM training_jobs WHERE id = ?", (job_id,))[0]

    def claim_job(self, stale_seconds: float, worker_pid: int | None = None) -> dict | None:
        """Take the oldest job to run: a running one whose worker stopped beating (resumed), else a queued one."""
        stale_before = (datetime.now(timezone.utc) - timedelta(seconds=stale_seconds)).isoformat(
            timespec="microseconds")
        with self._write() as db:
            rows = self._rows(
                db,
                "SELECT * FROM training_jobs WHERE (status = 'running' AND heartbeat_at < ?) OR status = 'queued' "
                "ORDER BY status = 'queued', created_at LIMIT 1",
                (stale_before,),
            )
            if not rows:
                return None
            started = now()
            db.execute(
                "UPDATE training_jobs SET status = 'running', attempts = attempts + 1, started_at = ?, "
                "heartbeat_at = ?, progress = 0, message = ?, worker_pid = ? WHERE id = ?",
                (started, started, "resumed after the worker stopped" if rows[0]["status"] == "running" else "started",
                 worker_pid, rows[0]["id"]),
            )
            return self._rows(db, "SELECT * FROM training_jobs WHERE id = ?", (rows[0]["id"],))[0]

    def job_progress(self, job_id: str, progress: float, message: str) -> None:
        with self._write() as db:
            db.execute("UPDATE training_jobs SET progress = ?, message = ?, heartbeat_at = ? WHERE id = ?",
                       (progress, message, now(), job_id))

    def finish_job(self, job_id: str, status: str, message: str, result: dict | None = None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE training_jobs SET status = ?, message = ?, result = ?, finished_at = ?, progress = ? "
                "WHERE id = ?",
                (status, message, json.dumps(result or {}), now(), 1.0 if status == "done" else 0.0, job_id),
            )

    def requeue_job(self, job_id: str, message: str) -> None:
        """A running job its worker stopped before the end: queued again (or cancelled when a newer job of the same
        adapter is queued already, which trains on everything this one would have)."""
        with self._write() as db:
            job = self._rows(db, "SELECT adapter FROM training_jobs WHERE id = ?", (job_id,))
            if not job:
                return
            newer = self._rows(db, "SELECT id FROM training_jobs WHERE adapter = ? AND status = 'queued'",
                               (job[0]["adapter"],))
            db.execute("UPDATE training_jobs SET status = ?, message = ?, progress = 0, heartbeat_at = NULL "
                       "WHERE id = ? AND status = 'running'", ("cancelled" if newer else "queued", message, job_id))

    def requeue_jobs_of(self, worker_pid: int, message: str) -> int:
        """Requeue the running jobs of a worker process known to be gone (the app saw it exit): the next worker
        takes them at once instead of waiting for their heartbeat to go stale. Returns how many."""
        with self._db() as db:
            running = self._rows(db, "SELECT id FROM training_jobs WHERE status = 'running' AND worker_pid = ?",
                                 (worker_pid,))
        for job in running:
            self.requeue_job(job["id"], message)
        return len(running)

    def get_job(self, job_id: str) -> dict:
        with self._db() as db:
            rows = self._rows(db, "SELECT * FROM training_jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound("That training job does not exist.")
        return rows[0]

    def latest_job(self, adapter: str) -> dict | None:
        with self._db() as db:
            rows = self._rows(db, "SELECT * FROM training_jobs WHERE adapter = ? ORDER BY created_at DESC LIMIT 1",
                              (adapter,))
        return rows[0] if rows else None

    def training_running(self) -> bool:
        """Whether a worker is training now (a running job whose heartbeat is fresh or stale alike)."""
        with self._db() as db:
            return bool(self._rows(db, "SELECT 1 FROM training_jobs WHERE status = 'running' LIMIT 1"))

    def active_jobs(self, adapters: list[str]) -> list[dict]:
        """The queued and running jobs of these adapters, oldest first."""
        marks = ", ".join("?" * len(adapters))
        with self._db() as db:
            return self._rows(db, f"SELECT * FROM training_jobs WHERE adapter IN ({marks}) "
                                  "AND status IN ('queued', 'running') ORDER BY created_at", tuple(adapters))

    def cancel_jobs(self, adapter: str) -> None:
        with self._write() as db:
            db.execute("UPDATE training_jobs SET status = 'cancelled', finished_at = ? "
                       "WHERE adapter = ? AND status IN ('queued', 'running')", (now(), adapter))

    def worker_beat(self, pid: int, started_at: str) -> None:
        """The worker `pid` is alive now (rows of other, older workers are dropped: one per running worker)."""
        beat = now()
        with self._write() as db:
            db.execute("INSERT INTO worker_heartbeats (pid, started_at, beat_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (pid) DO UPDATE SET beat_at = excluded.beat_at", (pid, started_at, beat))
            db.execute("DELETE FROM worker_heartbeats WHERE pid != ? AND beat_at < ?", (pid, started_at))

    def worker_heartbeat(self) -> dict | None:
        """The newest worker heartbeat (pid, started_at, beat_at), None if no worker ever ran on this data home."""
        with self._db() as db:
            rows = self._rows(db, "SELECT * FROM worker_heartbeats ORDER BY beat_at DESC LIMIT 1")
        return rows[0] if rows else None
