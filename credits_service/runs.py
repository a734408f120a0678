"""Starting a run: the lock, the run history, and the job in between.

This is what the HTTP endpoint and the ``credits distribute`` command share.
It needs an app context (for the engine, the plans and the settings) but
knows nothing of requests.
"""

import logging
import threading
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from .distributor import distribute
from .extensions import db
from .models import Run
from .period import Period, utc_naive
from .run_lock import LockBusy, run_lock

log = logging.getLogger(__name__)

runs = Run.__table__
LOGGED_COUNTS = ("usersCount", "processedCount", "errorCount", "durationMs", "expired", "granted", "skipped")


class RunInProgress(Exception):
    """Another run holds the lock; ``running`` is its history row, if any."""

    def __init__(self, running):
        super().__init__("a run is in progress")
        self.running = running


class DatabaseUnavailable(Exception):
    """The database could not be used before anything was changed.

    ``str()`` is safe to show a caller: the driver's own message, which may
    name hosts, only goes to the log.
    """


def _not_started(run_id, error):
    message = str(error.orig)
    schema_behind = getattr(error.orig, "sqlstate", None) in ("42P01", "42703") or any(
        sign in message for sign in ("no such table", "no such column", "has no column named")
    )
    if schema_behind:
        reason = "the database schema is missing or out of date: run flask db upgrade"
    else:
        reason = "the database cannot be reached"
    log.error("run %s not started: %s (%s)", run_id, reason, str(error.orig).strip(), extra={"run_id": run_id})
    return DatabaseUnavailable(reason)


class RunFailed(Exception):
    """The run stopped part way; the batches committed so far stay."""

    def __init__(self, run_id, reason):
        super().__init__(reason)
        self.run_id = run_id
        self.reason = reason


@dataclass
class _Started:
    """A run that holds the lock and has its history row; the job is next."""

    run_id: str
    now: datetime
    dry_run: bool
    shard: object
    held: ExitStack
    context: dict


def begin_run(trigger, *, now=None, dry_run=False, request_id=None, shard=None):
    """Take the run lock and record the run as running.

    Raises RunInProgress or DatabaseUnavailable, in both cases having changed
    nothing, so the caller can answer at once.
    """
    engine = db.engine
    now = now or datetime.now(UTC)
    period = Period.containing(now, current_app.config["CREDITS_TIMEZONE"])
    run_id = str(uuid.uuid4())
    held = ExitStack()
    try:
        held.enter_context(run_lock(engine, shard))
        _record_start(engine, run_id, trigger, period, now, dry_run, request_id, shard)
    except LockBusy:
        raise RunInProgress(_running(engine)) from None
    except BaseException as error:
        held.close()  # never leave the lock behind
        if isinstance(error, DBAPIError):
            raise _not_started(run_id, error) from None
        raise
    context = {"run_id": run_id, "trigger": trigger, "period": period.label, "dry_run": dry_run,
               "shard": str(shard) if shard else None, "request_id": request_id}
    log.info("run %s started (%s, period %s%s)", run_id, trigger, period.label,
             ", dry run" if dry_run else "", extra=context)
    return _Started(run_id, now, dry_run, shard, held, context)


def finish_run(started, progress=None):
    """Run the job of a begun run, record how it ended, release the lock."""
    engine = db.engine
    config = current_app.config
    with started.held:
        try:
            summary = distribute(
                engine,
                current_app.extensions["credits_plans"],
                started.now,
                zone=config["CREDITS_TIMEZONE"],
                dry_run=started.dry_run,
                batch_size=config["CREDITS_BATCH_SIZE"],
                workers=config["CREDITS_WORKERS"],
                run_id=started.run_id,
                shard=started.shard,
                progress=progress,
            )
        except Exception as error:
            reason = f"{type(error).__name__}: {getattr(error, 'orig', error)}".strip()[:500]
            log.exception("run %s failed: %s", started.run_id, reason, extra=started.context)
            _record_end(engine, started.run_id, "failed", error=reason)
            raise RunFailed(started.run_id, reason) from error
        counts = summary.as_json()
        _record_end(engine, started.run_id, "succeeded", summary=counts)
        log.info(
            "run %s finished: users %s, processed %s, errors %s in %s ms",
            started.run_id, summary.users, summary.processed, summary.errors, summary.duration_ms,
            extra=started.context | {key: counts[key] for key in LOGGED_COUNTS},
        )
        return summary


def start_run(trigger, *, now=None, dry_run=False, request_id=None, shard=None, progress=None):
    """Run the job once under the run lock and record it; return the Summary."""
    started = begin_run(trigger, now=now, dry_run=dry_run, request_id=request_id, shard=shard)
    return finish_run(started, progress)


def start_run_in_background(trigger, *, dry_run=False, request_id=None, shard=None):
    """Begin a run here, finish it in a thread; return its id at once.

    For databases too large for one call's time window. If the worker dies
    before the thread is done, the run shows as abandoned and the next call
    finishes its work (every batch commits on its own).
    """
    started = begin_run(trigger, dry_run=dry_run, request_id=request_id, shard=shard)
    app = current_app._get_current_object()

    def work():
        with app.app_context():
            try:
                finish_run(started)
            except RunFailed:
                pass  # logged and recorded by finish_run

    try:
        threading.Thread(target=work, name=f"run-{started.run_id}", daemon=True).start()
    except BaseException:
        _record_end(db.engine, started.run_id, "failed", error="the background run could not start")
        started.held.close()
        raise
    return started.run_id


def find_run(run_id=None):
    """The history row of ``run_id``, or the latest run; None if there is none."""
    query = select(runs)
    if run_id is None:
        query = query.order_by(runs.c.started_at.desc()).limit(1)
    else:
        query = query.where(runs.c.id == run_id)
    with db.engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return _as_json(row) if row else None


def _as_json(row):
    def moment(value):
        return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z") if value else None

    return {
        "runId": row["id"],
        "trigger": row["trigger"],
        "period": row["period"],
        "dryRun": row["dry_run"],
        "shard": row["shard"],
        "requestId": row["request_id"],
        "status": row["status"],
        "startedAt": moment(row["started_at"]),
        "finishedAt": moment(row["finished_at"]),
        "summary": row["summary"],
        "error": row["error"],
    }


def _running(engine):
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(runs).where(runs.c.status == "running").order_by(runs.c.started_at.desc()).limit(1)
            ).mappings().first()
    except DBAPIError:
        return None
    return _as_json(row) if row else None


def _record_start(engine, run_id, trigger, period, now, dry_run, request_id, shard):
    started = utc_naive(datetime.now(UTC))
    # We hold the lock, so some runs still marked as running died with their
    # process: any run at all, for a whole run; for a shard run, whole runs
    # (they exclude shard runs) and earlier runs of the same shard.
    dead = runs.c.status == "running"
    if shard is not None:
        dead &= or_(runs.c.shard.is_(None), runs.c.shard == str(shard))
    with engine.begin() as conn:
        conn.execute(
            update(runs).where(dead).values(
                status="abandoned", finished_at=started, error="the process running it stopped"
            )
        )
        conn.execute(
            runs.insert().values(
                id=run_id,
                trigger=trigger,
                period=period.label,
                now=utc_naive(now),
                dry_run=dry_run,
                request_id=request_id,
                shard=str(shard) if shard else None,
                status="running",
                started_at=started,
            )
        )


def _record_end(engine, run_id, status, *, summary=None, error=None):
    try:
        with engine.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(status=status, finished_at=utc_naive(datetime.now(UTC)), summary=summary, error=error)
            )
    except OperationalError:
        # The next run will find it still "running" and mark it abandoned.
        log.exception("run %s: could not record its end (%s)", run_id, status)
