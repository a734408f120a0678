"""How far a run from the command line has got.

On a terminal: click's progress bar on stderr. Otherwise (cron, systemd,
CI): a log line every few seconds with users done, total and rate, so that
a long run can be followed in the log without flooding it.
"""

import logging
import sys
import threading
import time

import click

log = logging.getLogger(__name__)
LOG_EVERY_SECONDS = 5


class Progress:
    """A ``progress`` callback for ``distribute``: call it with users done.

    Batches finish on several worker threads, hence the lock.
    """

    def __init__(self, total, stream=None):
        self.total = total
        self.done = 0
        self.started = self.logged = time.monotonic()
        self.lock = threading.Lock()
        stream = stream or sys.stderr
        self.bar = click.progressbar(length=total, label="users", file=stream) if stream.isatty() else None

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)
        else:
            self.log()

    def __call__(self, users):
        with self.lock:
            self.done += users
            if self.bar:
                self.bar.update(users)
            elif time.monotonic() - self.logged >= LOG_EVERY_SECONDS:
                self.log()

    def log(self):
        self.logged = time.monotonic()
        rate = self.done / max(self.logged - self.started, 1e-9)
        log.info("progress: %s of %s users, %.0f users/s", self.done, self.total, rate,
                 extra={"users_done": self.done, "users_total": self.total, "users_per_second": round(rate)})
