"""Who may reach the endpoint at all, before credentials are even looked at.

* Behind a reverse proxy the client address is the proxy's; ``ProxyFix``
  trusts exactly ``TRUSTED_PROXY_HOPS`` forwarding hops (none by default, so
  a direct caller cannot forge ``X-Forwarded-For``).
* ``CRON_JOBS_ALLOWED_IPS`` (CIDRs) optionally limits the callers to the
  scheduler's networks: anyone else gets 403.
* Failed logins are limited per client address (429 with ``Retry-After``),
  so the password cannot be guessed at speed. The counts live in each
  worker's memory: with N workers an address gets at most N times the limit.
* Request bodies are never read; a large one is refused outright.
"""

import ipaddress
import math
import time

from flask import abort, jsonify, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from limits import parse_many
from werkzeug.middleware.proxy_fix import ProxyFix

MAX_BODY_BYTES = 1024


def parse_networks(value):
    """The networks of ``CRON_JOBS_ALLOWED_IPS``; a bad entry stops start-up."""
    networks = []
    for entry in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"CRON_JOBS_ALLOWED_IPS: {entry!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def init_app(app, blueprint, *limited):
    """Guard every route of ``blueprint``; limit failed logins there and on ``limited``."""
    hops = app.config["TRUSTED_PROXY_HOPS"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)

    networks = parse_networks(app.config["CRON_JOBS_ALLOWED_IPS"])

    @app.before_request
    def refuse_strangers():
        if request.blueprint != blueprint.name:
            return
        if networks and not address_in(request.remote_addr, networks):
            abort(403, "this address may not call the endpoint")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            abort(413, "the endpoint takes no request body")

    # One limiter per app: Flask-Limiter keeps its storage on the instance.
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri="memory://",
        enabled=app.config["AUTH_FAILURE_LIMIT_ENABLED"],
    )
    failures = app.config["AUTH_FAILURE_LIMIT"]
    try:
        parse_many(failures)
    except ValueError:
        raise ValueError(f"CRON_JOBS_AUTH_FAILURE_LIMIT: {failures!r} is not a limit such as '10 per minute'") from None
    for guarded in (blueprint, *limited):
        limiter.limit(failures, deduct_when=lambda response: response.status_code == 401)(guarded)

    @app.errorhandler(RateLimitExceeded)
    def too_many_failures(error):
        wait = max(1, math.ceil(limiter.current_limit.reset_at - time.time()))
        response = jsonify(error="too_many_requests", message="too many failed logins from this address; wait")
        return response, 429, {"Retry-After": str(wait)}


def address_in(address, networks):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
