"""The grant period: the calendar month of the run, in the configured zone.

A team in Shanghai expects December's credits at 00:05 on 1 December their
time, which is still 30 November in UTC, so the month is taken in
``CREDITS_TIMEZONE`` and never in the server's local zone.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name):
    """The ``ZoneInfo`` for ``name``, or a ``ValueError`` that names it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Asia/Shanghai')") from None


def utc_naive(moment):
    """How the database stores a moment: naive UTC, as MkSaaS does."""
    return moment.astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Period:
    year: int
    month: int
    start: datetime  # naive UTC, inclusive
    end: datetime  # naive UTC, exclusive

    @classmethod
    def containing(cls, now, zone_name="UTC"):
        local = now.astimezone(zone(zone_name))
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
        return cls(local.year, local.month, utc_naive(first), utc_naive(following))

    @property
    def key(self):
        """YYYYMM, the value of ``credit_transaction.period_key``."""
        return self.year * 100 + self.month

    @property
    def label(self):
        return f"{self.year:04d}-{self.month:02d}"
