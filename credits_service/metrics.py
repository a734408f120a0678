"""``/metrics`` in the Prometheus text format, read from the run history.

The figures come from ``credits_service_run`` at scrape time rather than
from counters in memory: every gunicorn worker and every replica then
reports the same truth, and a restart loses nothing. Dry runs are left out.

Scraping needs the cron Basic credentials, or, when ``METRICS_ALLOWED_IPS``
is set, an address in those networks (and then no credentials).
"""

from datetime import UTC

from flask import Blueprint, Response, abort, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import select

from .auth import basic_auth
from .extensions import db
from .guard import address_in, parse_networks
from .models import RECURRING_GRANTS, Run

bp = Blueprint("metrics", __name__)
runs = Run.__table__
STATUSES = ("running", "succeeded", "failed", "abandoned")


class RunHistoryCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        with self.engine.connect() as conn:
            history = conn.execute(
                select(runs.c.status, runs.c.started_at, runs.c.finished_at, runs.c.summary)
                .where(runs.c.dry_run.is_(False))
                .order_by(runs.c.started_at)
            ).all()

        by_status = CounterMetricFamily("credits_service_runs", "Runs of the job, by how they ended.", labels=["status"])
        counted = {status: 0 for status in STATUSES}
        grants = {kind: 0 for kind in RECURRING_GRANTS}
        expired = 0
        last_success = last_finished = None
        for status, started, finished, summary in history:
            counted[status] = counted.get(status, 0) + 1
            if status == "succeeded":
                last_success = finished
                for kind in grants:
                    grants[kind] += summary["granted"].get(kind, 0)
                expired += summary["expired"]["credits"]
            if finished is not None and summary is not None:
                last_finished = (started, finished, summary)
        for status, count in counted.items():
            by_status.add_metric([status], count)
        yield by_status

        granted = CounterMetricFamily("credits_service_grants", "Monthly grants written, by type.", labels=["type"])
        for kind, count in grants.items():
            granted.add_metric([kind], count)
        yield granted
        yield CounterMetricFamily("credits_service_expired_credits", "Credits expired by the job.", value=expired)

        if last_success is not None:
            yield GaugeMetricFamily(
                "credits_service_last_success_timestamp_seconds",
                "When the last successful run finished (Unix time).",
                value=_unix(last_success),
            )
        if last_finished is not None:
            started, finished, summary = last_finished
            yield GaugeMetricFamily(
                "credits_service_last_run_duration_seconds", "Wall time of the last finished run.",
                value=(finished - started).total_seconds(),
            )
            for key, name in (("usersCount", "users"), ("processedCount", "processed"), ("errorCount", "errors")):
                yield GaugeMetricFamily(
                    f"credits_service_last_run_{name}", f"{key} of the last finished run.", value=summary[key]
                )


def _unix(naive_utc):
    return naive_utc.replace(tzinfo=UTC).timestamp()


def _render():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunHistoryCollector(db.engine))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app):
    app.extensions["metrics_networks"] = parse_networks(app.config["METRICS_ALLOWED_IPS"])
    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics():
    networks = current_app.extensions["metrics_networks"]
    if networks:
        if not address_in(request.remote_addr, networks):
            abort(403, "this address may not scrape the metrics")
        return _render()
    return basic_auth.login_required(_render)()
