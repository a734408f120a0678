"""One run at a time, across gunicorn workers, replicas and the CLI.

The lock must vanish with the process that holds it, or a run killed at 3 am
would block every later day. Both implementations have that property:

* PostgreSQL: a session advisory lock, released by the server the moment the
  holder's connection closes;
* SQLite: an ``flock`` on a file beside the database, released by the kernel
  when the holder's process exits.
"""

import fcntl
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError


class LockBusy(Exception):
    """Another run holds the lock."""


def lock_key(name):
    """A stable 63-bit key for ``pg_try_advisory_lock``."""
    return zlib.crc32(f"credits_service:{name}".encode()) | (1 << 40)


@contextmanager
def run_lock(engine, name="distribute"):
    """Hold the lock named ``name`` for the ``with`` block, or raise LockBusy."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, lock_key(name)):
            yield
    else:
        with _file_lock(engine, name):
            yield


@contextmanager
def _advisory_lock(engine, key):
    conn = engine.connect()
    try:
        acquired = conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
        conn.commit()
        if not acquired:
            raise LockBusy()
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
            except DBAPIError:
                # Dropping the connection releases the lock on the server.
                conn.invalidate()
    finally:
        conn.close()


_memory_locks = {}
_memory_guard = threading.Lock()


@contextmanager
def _file_lock(engine, name):
    database = engine.url.database
    if not database or database == ":memory:":
        # An in-memory database lives in one process: a thread lock will do.
        with _memory_guard:
            lock = _memory_locks.setdefault((id(engine), name), threading.Lock())
        if not lock.acquire(blocking=False):
            raise LockBusy()
        try:
            yield
        finally:
            lock.release()
        return
    path = Path(f"{database}.{name}.lock")
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy() from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
