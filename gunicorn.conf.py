"""gunicorn settings for credits_service: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every setting can be changed from the environment (or from ``.env``, read
here too, so that one file configures both the app and the server).
"""

import os
from pathlib import Path

from dotenv import dotenv_values

# gunicorn reads this file in the master, before any worker imports the app,
# so GUNICORN_* set in .env must be picked up here. Only those: the app reads
# the rest of .env itself, in each worker, and a reload (SIGHUP) then sees
# changes to it (a new cron password, say). The environment wins over .env.
for name, value in dotenv_values(Path(__file__).with_name(".env")).items():
    if name.startswith("GUNICORN_") and value is not None:
        os.environ.setdefault(name, value)

# Loopback by default: the service is meant to sit behind a reverse proxy
# that terminates TLS. Set GUNICORN_BIND=0.0.0.0:8000 to listen on every
# interface (only do that with TLS in front).
bind = os.environ.get("GUNICORN_BIND") or "127.0.0.1:8000"

# The endpoint is called about once a day, so few workers are needed; two
# keep /api/distribute-credits/runs/latest (and the 409 answer to an
# overlapping call) available while one worker is busy with a run.
workers = int(os.environ.get("GUNICORN_WORKERS") or 2)

# A run is a single synchronous request. gunicorn kills a worker that has
# not answered within `timeout` seconds, so it must be longer than a run can
# take (a killed run leaves the database consistent, but its caller gets an
# error instead of the summary). cron-job.org stops waiting after at most
# 30 s, while the run goes on to its end here.
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 120)

# On shutdown or reload (SIGTERM, SIGHUP), let a run in progress finish
# instead of cutting it off after gunicorn's default 30 s.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT") or timeout)

# Access log on stdout, error log on stderr, for journald, docker or any
# process manager to collect.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL") or "info"

# The default access log format includes %(u)s, the Basic-auth user name
# taken from the Authorization header, plus the Referer and User-Agent
# headers. This one logs no request header at all (and so never anything
# from Authorization): client address, time, request line, status, response
# size and duration in milliseconds.
access_log_format = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms'

# The service's own log (runs, failed users) also goes to stderr: the app
# sets that up itself (LOG_FORMAT, LOG_LEVEL), as gunicorn leaves the root
# logger alone.

# gunicorn 25.1+ opens a control socket for `gunicornc` at one path per user
# ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl), which a second gunicorn of
# the same user would share. This service does not need it. (Older gunicorn
# versions ignore the setting.)
control_socket_disable = True
