"""One run at a time, across gunicorn workers, replicas and the CLI.

The lock must vanish with the process that holds it, or a run killed at 3 am
would block every later day. Both implementations have that property:

* PostgreSQL: session advisory locks, released by the server the moment the
  holder's connection closes;
* SQLite: ``flock`` on files beside the database, released by the kernel
  when the holder's process exits.

A whole run takes the main lock exclusively. A shard run (``K/N``) takes it
shared, plus its shard's own lock exclusively: shards run side by side, but
never beside a whole run or a second copy of themselves.
"""

import fcntl
import threading
import zlib
from contextlib import ExitStack, contextmanager

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

MAIN = "distribute"


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
        with _advisory_locks(engine, _names(shard)):
            yield
    else:
        with ExitStack() as held:
            for name, shared in _names(shard):
                held.enter_context(_file_lock(engine, name, shared))
            yield


@contextmanager
def _advisory_locks(engine, names):
    conn = engine.connect()
    taken = []
    try:
        for name, shared in names:
            function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
            if not conn.scalar(text(f"SELECT {function}(:key)"), {"key": lock_key(name)}):
                raise LockBusy()
            taken.append((name, shared))
        conn.commit()
        yield
    finally:
        try:
            for name, shared in reversed(taken):
                function = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
                conn.execute(text(f"SELECT {function}(:key)"), {"key": lock_key(name)})
            conn.commit()
        except DBAPIError:
            # Dropping the connection releases its locks on the server.
            conn.invalidate()
        conn.close()


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
