"""Starting a run: the lock, the run history, and the job in between.

This is what the HTTP endpoint and the ``credits distribute`` command share.
It needs an app context (for the engine, the plans and the settings) but
knows nothing of requests.
"""

import logging
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from .distributor import distribute
from .extensions import db
from .models import Run
from .period import Period, utc_naive
from .run_lock import LockBusy, run_lock

log = logging.getLogger(__name__)

runs = Run.__table__


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
    missing_table = getattr(error.orig, "sqlstate", None) == "42P01" or "no such table" in str(error.orig)
    if missing_table:
        reason = "the database has no credits_service schema yet: run flask db upgrade"
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


def start_run(trigger, *, now=None, dry_run=False, request_id=None):
    """Run the job once under the run lock and record it; return the Summary."""
    engine = db.engine
    now = now or datetime.now(UTC)
    config = current_app.config
    period = Period.containing(now, config["CREDITS_TIMEZONE"])
    run_id = str(uuid.uuid4())
    held = ExitStack()
    try:
        held.enter_context(run_lock(engine))
        _record_start(engine, run_id, trigger, period, now, dry_run, request_id)
    except LockBusy:
        raise RunInProgress(_running(engine)) from None
    except BaseException as error:
        held.close()  # never leave the lock behind
        if isinstance(error, DBAPIError):
            raise _not_started(run_id, error) from None
        raise
    with held:
        context = {"run_id": run_id, "trigger": trigger, "period": period.label, "dry_run": dry_run}
        log.info("run %s started (%s, period %s%s)", run_id, trigger, period.label,
                 ", dry run" if dry_run else "", extra=context)
        try:
            summary = distribute(
                engine,
                current_app.extensions["credits_plans"],
                now,
                zone=config["CREDITS_TIMEZONE"],
                dry_run=dry_run,
                batch_size=config["CREDITS_BATCH_SIZE"],
                run_id=run_id,
            )
        except Exception as error:
            reason = f"{type(error).__name__}: {getattr(error, 'orig', error)}".strip()[:500]
            log.exception("run %s failed: %s", run_id, reason, extra=context)
            _record_end(engine, run_id, "failed", error=reason)
            raise RunFailed(run_id, reason) from error
        counts = summary.as_json()
        _record_end(engine, run_id, "succeeded", summary=counts)
        log.info(
            "run %s finished: users %s, processed %s, errors %s in %s ms",
            run_id, summary.users, summary.processed, summary.errors, summary.duration_ms,
            extra=context | {key: counts[key] for key in
                             ("usersCount", "processedCount", "errorCount", "durationMs", "expired", "granted", "skipped")},
        )
        return summary


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
    except OperationalError:
        return None
    return _as_json(row) if row else None


def _record_start(engine, run_id, trigger, period, now, dry_run, request_id):
    started = utc_naive(datetime.now(UTC))
    with engine.begin() as conn:
        # We hold the lock, so a run still marked as running died with its process.
        conn.execute(
            update(runs)
            .where(runs.c.status == "running")
            .values(status="abandoned", finished_at=started, error="the process running it stopped")
        )
        conn.execute(
            runs.insert().values(
                id=run_id,
                trigger=trigger,
                period=period.label,
                now=utc_naive(now),
                dry_run=dry_run,
                request_id=request_id,
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
