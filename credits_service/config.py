"""Settings read from the environment (and ``.env``, loaded by ``create_app``)."""

import os
from pathlib import Path

DEFAULT_PLANS_FILE = Path(__file__).with_name("plans.toml")


def database_uri(url):
    """Map the URLs a MkSaaS ``.env`` holds onto the psycopg 3 driver.

    MkSaaS writes ``postgresql://`` or ``postgres://``; SQLAlchemy would pick
    psycopg2 for the first and reject the second, so both are made explicit.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Config:
    """Defaults for every setting; ``create_app(config)`` may override any."""

    def __init__(self, instance_path):
        env = os.environ
        default_db = f"sqlite:///{Path(instance_path) / 'credits.sqlite'}"
        self.SQLALCHEMY_DATABASE_URI = database_uri(env.get("DATABASE_URL") or default_db)
        self.CRON_JOBS_USERNAME = env.get("CRON_JOBS_USERNAME", "")
        self.CRON_JOBS_PASSWORD = env.get("CRON_JOBS_PASSWORD", "")
        self.CRON_JOBS_PASSWORD_HASH = env.get("CRON_JOBS_PASSWORD_HASH", "")
        self.CRON_JOBS_PASSWORD_PREVIOUS = env.get("CRON_JOBS_PASSWORD_PREVIOUS", "")
        self.CRON_JOBS_ALLOWED_IPS = env.get("CRON_JOBS_ALLOWED_IPS", "")
        self.TRUSTED_PROXY_HOPS = _whole_number(env, "TRUSTED_PROXY_HOPS", 0)
        self.AUTH_FAILURE_LIMIT = env.get("CRON_JOBS_AUTH_FAILURE_LIMIT") or "10 per minute"
        self.AUTH_FAILURE_LIMIT_ENABLED = True
        self.CREDITS_PLANS_FILE = env.get("CREDITS_PLANS_FILE") or str(DEFAULT_PLANS_FILE)
        self.CREDITS_TIMEZONE = env.get("CREDITS_TIMEZONE") or "UTC"
        self.CREDITS_BATCH_SIZE = _whole_number(env, "CREDITS_BATCH_SIZE", 5000)
        self.CREDITS_WORKERS = _whole_number(env, "CREDITS_WORKERS", 2)
        self.METRICS_ALLOWED_IPS = env.get("METRICS_ALLOWED_IPS", "")
        self.LOG_FORMAT = env.get("LOG_FORMAT", "")
        self.LOG_LEVEL = env.get("LOG_LEVEL") or "INFO"


def _whole_number(env, name, default):
    value = env.get(name) or str(default)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
