"""Logging: one JSON object a line for log shippers, plain text for people.

``LOG_FORMAT`` picks ``json`` or ``text`` (default: text on a terminal, JSON
otherwise); ``LOG_LEVEL`` the level. Fields passed with ``extra=`` (run id,
user id, counts) become keys of the JSON object. Nothing here ever sees a
secret: the service logs no header and no password.
"""

import json
import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else on a record came from extra=.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def formatter_for(log_format):
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise ValueError(f"LOG_FORMAT must be json or text, got {log_format!r}")


def init_app(app):
    """Send the service's logs to stderr, unless logging is set up already.

    Like ``logging.basicConfig``, it leaves a root logger that has handlers
    alone (pytest's capture, an embedding application's own set-up).
    """
    log_format = app.config["LOG_FORMAT"] or ("text" if sys.stderr.isatty() else "json")
    formatter = formatter_for(log_format)
    level = app.config["LOG_LEVEL"].upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError(f"LOG_LEVEL must be a logging level such as INFO, got {level!r}")
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
