"""Splitting one run into N shards that run in parallel.

A user belongs to shard K of N by a stable hash of their id (the first 32
bits of its MD5), computed the same way by PostgreSQL and by SQLite, so N
cron jobs, or N replicas each called with ``?shard=K/N``, cover every user
exactly once.
"""

import hashlib
import re
from dataclasses import dataclass

from sqlalchemy import Integer
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

_SHARD = re.compile(r"^([1-9][0-9]{0,3})/([1-9][0-9]{0,3})$")
SQLITE_FUNCTION = "credits_shard"


@dataclass(frozen=True)
class Shard:
    number: int  # 1..count
    count: int

    @classmethod
    def parse(cls, text):
        """``"K/N"`` with 1 <= K <= N, or a ValueError saying what is wrong."""
        match = _SHARD.match(text or "")
        if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
            raise ValueError(f"shard must be K/N with 1 <= K <= N (e.g. 2/4), got {text[:20]!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self):
        return f"{self.number}/{self.count}"

    def holds(self, column):
        """SQL: the rows of ``column`` (a user id) that fall in this shard."""
        return shard_of(column, self.count) == self.number - 1


def shard_index(user_id, count):
    """Python's side of the hash, for SQLite and for tests."""
    return int(hashlib.md5(user_id.encode()).hexdigest()[:8], 16) % count


class shard_of(FunctionElement):
    type = Integer()
    inherit_cache = True


@compiles(shard_of, "postgresql")
def _shard_of_postgresql(element, compiler, **kw):
    column, count = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"mod(('x' || substr(md5({column}), 1, 8))::bit(32)::bigint, {count})"


@compiles(shard_of, "sqlite")
def _shard_of_sqlite(element, compiler, **kw):
    column, count = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"{SQLITE_FUNCTION}({column}, {count})"


def register_sqlite_function(dbapi_connection):
    dbapi_connection.create_function(SQLITE_FUNCTION, 2, shard_index, deterministic=True)
