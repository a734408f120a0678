"""``flask credits ...``: the job and its checks, without HTTP.

Exit codes follow SPEC section 5b: 0 when every user was handled, 1 when some
failed (or the ledger is out of balance), 2 on bad usage.
"""

import json
import sys
from datetime import UTC, datetime

import click
from flask import Blueprint, current_app
from sqlalchemy.exc import DBAPIError

from . import demo
from .extensions import db
from .ledger import find_drift
from .distributor import count_users
from .progress import Progress
from .runs import DatabaseUnavailable, RunFailed, RunInProgress, start_run
from .shards import Shard

bp = Blueprint("credits", __name__, cli_group="credits")


class Moment(click.ParamType):
    """An ISO 8601 moment; one without an offset is taken as UTC."""

    name = "moment"

    def convert(self, value, param, ctx):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date and time such as 2026-12-01T00:05:00Z", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class ShardOption(click.ParamType):
    name = "K/N"

    def convert(self, value, param, ctx):
        try:
            return Shard.parse(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


@bp.cli.command("distribute")
@click.option("--now", type=Moment(), help="Run as if at this moment (default: the current time).")
@click.option("--dry-run", is_flag=True, help="Report what would be done; change nothing.")
@click.option("--shard", type=ShardOption(), help="Only the users of shard K of N (e.g. 2/4).")
def distribute_command(now, dry_run, shard):
    """Expire and grant credits, and print the JSON summary."""
    try:
        total = count_users(db.engine, shard)
    except DBAPIError:
        _fail({"error": "database_unavailable", "message": "the database cannot be reached, or has no schema yet"})
    try:
        with Progress(total) as progress:
            summary = start_run("cli", now=now, dry_run=dry_run, shard=shard, progress=progress)
    except RunInProgress as busy:
        _fail({"error": "run_in_progress", "running": busy.running})
    except DatabaseUnavailable as error:
        _fail({"error": "database_unavailable", "message": str(error)})
    except RunFailed as error:
        _fail({"error": "run_failed", "runId": error.run_id, "message": error.reason})
    click.echo(json.dumps(summary.as_json()))
    sys.exit(1 if summary.errors else 0)


def _fail(answer):
    click.echo(json.dumps(answer), err=True)
    sys.exit(1)


@bp.cli.command("verify")
def verify_command():
    """Report every user whose balance differs from the sum of their grants."""
    drifted = 0
    with db.engine.connect() as conn:
        for user_id, balance, remaining in find_drift(conn):
            drifted += 1
            click.echo(f"{user_id}\tbalance {balance}\tgrants hold {remaining}\tdrift {balance - remaining:+d}")
    if drifted:
        click.echo(f"{drifted} user(s) out of balance", err=True)
        sys.exit(1)
    click.echo("ledger in balance", err=True)


@bp.cli.command("seed-demo")
@click.option("--users", type=click.IntRange(min=1), required=True, help="How many users to create.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed: same seed, same population.")
def seed_demo_command(users, seed):
    """Fill the database with a realistic demo population."""
    counts = demo.seed(
        db.engine,
        current_app.extensions["credits_plans"],
        users=users,
        seed=seed,
        zone=current_app.config["CREDITS_TIMEZONE"],
    )
    click.echo(json.dumps(counts))
