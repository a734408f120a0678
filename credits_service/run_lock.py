"""One run at a time, across gunicorn workers, replicas and the CLI.

The lock must vanish with the process that holds it, or a run killed at 3 am
would block every later day. Both implementations have that property:

* PostgreSQL: session advisory locks, released by the server the moment the
  holder's connection closes;
* SQLite: ``flock`` on files beside the database, released by the kernel
  when the holder's process exits.

A whole run takes the main lock exclusively. A shard run (``K/N``) takes it
shared, its shard's own lock exclusively, and a lock on its shard count N
shared, which it may only take while no run of another count holds one:
shards of one N run side by side, but never beside a whole run, a second
copy of themselves, or shards that split the users another way.
"""

import fcntl
import glob
import threading
import zlib
from contextlib import ExitStack, contextmanager

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

MAIN = "distribute"
# Shard-count locks are keyed (family << 32) | N, so that pg_locks shows N
# in objid and a run can see whether another count is in use.
COUNT_FAMILY = 0x43524453


class LockBusy(Exception):
    """Another run holds the lock."""


def lock_key(name):
    """A stable 64-bit key for PostgreSQL's advisory lock functions."""
    return zlib.crc32(f"credits_service:{name}".encode()) | (1 << 40)


def _names(shard):
    """(name, shared?) pairs, main lock first, always in the same order."""
    if shard is None:
        return [(MAIN, False)]
    return [(MAIN, True), (f"{MAIN}-shard-{shard.number}-of-{shard.count}", False)]


@contextmanager
def run_lock(engine, shard=None):
    """Hold the run lock (of ``shard``, if given) for the block, or raise LockBusy."""
    if engine.dialect.name == "postgresql":
        with _advisory_locks(engine, _names(shard), shard):
            yield
    else:
        with ExitStack() as held:
            for name, shared in _names(shard):
                held.enter_context(_file_lock(engine, name, shared))
            if shard is not None:
                held.enter_context(_file_count_lock(engine, shard.count))
            yield


@contextmanager
def _advisory_locks(engine, names, shard):
    conn = engine.connect()
    taken = []  # (key, shared?)
    try:
        for name, shared in names:
            function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
            if not conn.scalar(text(f"SELECT {function}(:key)"), {"key": lock_key(name)}):
                raise LockBusy()
            taken.append((lock_key(name), shared))
        if shard is not None:
            taken.append((_claim_count(conn, shard.count), True))
        conn.commit()
        yield
    finally:
        try:
            conn.rollback()
            for key, shared in reversed(taken):
                function = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
                conn.execute(text(f"SELECT {function}(:key)"), {"key": key})
            conn.commit()
        except DBAPIError:
            # Dropping the connection releases its locks on the server.
            conn.invalidate()
        conn.close()


def _claim_count(conn, count):
    """Take the shard-count lock of ``count`` unless another count holds one.

    The check and the take happen under a transaction-level gate lock, so two
    runs of different counts starting at once cannot both pass.
    """
    conn.execute(text("SELECT pg_advisory_xact_lock(:gate)"), {"gate": lock_key("shard-count-gate")})
    other_count = conn.scalar(
        text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND classid::bigint = :family AND objid::bigint <> :count"
        ),
        {"family": COUNT_FAMILY, "count": count},
    )
    if other_count:
        raise LockBusy()
    key = (COUNT_FAMILY << 32) | count
    conn.execute(text("SELECT pg_advisory_lock_shared(:key)"), {"key": key})
    return key


_memory_locks = {}
_memory_guard = threading.Lock()


@contextmanager
def _file_lock(engine, name, shared):
    database = engine.url.database
    if not database or database == ":memory:":
        # An in-memory database lives in one process: a thread lock will do
        # (held exclusively even when shared would be enough).
        with _memory_guard:
            lock = _memory_locks.setdefault((id(engine), name), threading.Lock())
        if not lock.acquire(blocking=False):
            raise LockBusy()
        try:
            yield
        finally:
            lock.release()
        return
    with open(f"{database}.{name}.lock", "a") as handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy() from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _file_count_lock(engine, count):
    """SQLite's shard-count lock: a shared ``flock``, taken after checking,
    under an exclusive gate, that no other count's file is locked."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield  # one process: the main lock above already serialises runs
        return
    with ExitStack() as held:
        with open(f"{database}.shard-count-gate.lock", "a") as gate:
            fcntl.flock(gate, fcntl.LOCK_EX)  # held for a moment only: wait for it
            mine = f"{database}.{MAIN}-count-{count}.lock"
            for other in glob.glob(glob.escape(database) + f".{MAIN}-count-*.lock"):
                if other != mine and _is_locked(other):
                    raise LockBusy()
            handle = held.enter_context(open(mine, "a"))
            fcntl.flock(handle, fcntl.LOCK_SH)
        yield


def _is_locked(path):
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
