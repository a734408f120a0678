"""HTTP Basic auth for the cron caller (cron-job.org sends Basic credentials).

Fails closed: with no username or password configured, nobody gets in.
Credentials are compared in constant time and never logged.
"""

import hmac
import logging

from flask import current_app, jsonify
from flask_httpauth import HTTPBasicAuth

log = logging.getLogger(__name__)

basic_auth = HTTPBasicAuth(realm="credits_service")


def _same(given, expected):
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


@basic_auth.verify_password
def verify_password(username, password):
    expected_user = current_app.config["CRON_JOBS_USERNAME"]
    expected_password = current_app.config["CRON_JOBS_PASSWORD"]
    if not expected_user or not expected_password:
        log.error("refused a call: CRON_JOBS_USERNAME and CRON_JOBS_PASSWORD must both be set")
        return None
    # Both comparisons always run, so timing tells nothing about which failed.
    user_ok = _same(username or "", expected_user)
    password_ok = _same(password or "", expected_password)
    return username if user_ok and password_ok else None


@basic_auth.error_handler
def unauthorized(status):
    return jsonify(error="unauthorized", message="valid Basic credentials are required"), status
