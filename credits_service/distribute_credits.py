"""``/api/distribute-credits``: the endpoint cron-job.org calls once a day.

It parses, authenticates and hands over to ``runs``; every answer,
errors included, is JSON. cron-job.org follows no redirects, so the path
answers with and without a trailing slash.
"""

from dataclasses import dataclass

from flask import Blueprint, jsonify, request, url_for
from werkzeug.exceptions import MethodNotAllowed
from sqlalchemy.exc import OperationalError

from .auth import basic_auth
from .runs import DatabaseUnavailable, RunFailed, RunInProgress, find_run, start_run, start_run_in_background
from .shards import Shard

bp = Blueprint("distribute_credits", __name__, url_prefix="/api/distribute-credits")

QUERY_PARAMETERS = ("dryRun", "async", "shard")
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
REQUEST_ID_LIMIT = 200
RUN_ID_LIMIT = 36


class BadQuery(Exception):
    """A query parameter we do not understand: better refuse than guess."""


@dataclass(frozen=True)
class RunRequest:
    dry_run: bool = False
    run_async: bool = False
    shard: Shard | None = None


def parse_query(args):
    """What the query string asks for; anything unknown is refused.

    A misspelt ``dryrun=true`` must not turn into a real run, so unknown or
    repeated parameters are errors rather than ignored.
    """
    for name in args:
        if name not in QUERY_PARAMETERS:
            raise BadQuery(f"unknown query parameter {name!r} (allowed: {', '.join(QUERY_PARAMETERS)})")
        if len(args.getlist(name)) > 1:
            raise BadQuery(f"query parameter {name!r} given more than once")
    try:
        shard = Shard.parse(args["shard"]) if "shard" in args else None
    except ValueError as error:
        raise BadQuery(str(error)) from None
    return RunRequest(_boolean(args, "dryRun"), _boolean(args, "async"), shard)


def _boolean(args, name):
    value = args.get(name, "false")
    if value.lower() not in BOOLEANS:
        raise BadQuery(f"{name} must be true or false, got {value[:50]!r}")
    return BOOLEANS[value.lower()]


@bp.route("", methods=["GET", "POST"])
@bp.route("/", methods=["GET", "POST"])
@basic_auth.login_required
def distribute():
    if request.method == "HEAD":
        # Flask answers HEAD wherever GET is allowed; a HEAD must not run the job.
        raise MethodNotAllowed(valid_methods=["GET", "POST"])
    asked = parse_query(request.args)
    # Control characters (a NUL cannot even be stored in PostgreSQL) are dropped.
    request_id = "".join(ch for ch in request.headers.get("X-Request-Id", "") if ch.isprintable())
    options = {"dry_run": asked.dry_run, "request_id": request_id[:REQUEST_ID_LIMIT] or None, "shard": asked.shard}
    if asked.run_async:
        run_id = start_run_in_background("http", **options)
        status_url = url_for(".run", run_id=run_id)
        answer = jsonify(message="run started; poll its status URL", runId=run_id, status="running",
                         statusUrl=status_url)
        return answer, 202, {"Location": status_url}
    summary = start_run("http", **options)
    return jsonify(summary.as_json())


@bp.get("/runs/latest")
@basic_auth.login_required
def latest_run():
    return _run_or_404(find_run)


@bp.get("/runs/<run_id>")
@basic_auth.login_required
def run(run_id):
    if len(run_id) > RUN_ID_LIMIT or not run_id.isprintable():
        # Not an id this service writes (and a NUL would make PostgreSQL fail).
        return jsonify(error="not_found", message="no such run"), 404
    return _run_or_404(lambda: find_run(run_id))


def _run_or_404(find):
    try:
        found = find()
    except OperationalError:
        raise DatabaseUnavailable("the database cannot be reached") from None
    if found is None:
        return jsonify(error="not_found", message="no such run"), 404
    return jsonify(found)


@bp.errorhandler(BadQuery)
def bad_query(error):
    return jsonify(error="bad_request", message=str(error)), 400


@bp.errorhandler(RunInProgress)
def run_in_progress(error):
    running = error.running or {}
    return jsonify(
        error="run_in_progress",
        message="another run is in progress; this call changed nothing",
        runId=running.get("runId"),
        startedAt=running.get("startedAt"),
    ), 409


@bp.errorhandler(DatabaseUnavailable)
def database_unavailable(error):
    return jsonify(error="database_unavailable", message=f"{error}; nothing was changed"), 503


@bp.errorhandler(RunFailed)
def run_failed(error):
    return jsonify(
        error="run_failed",
        message="the run stopped part way; committed batches stay and the next call finishes the rest",
        runId=error.run_id,
    ), 500
