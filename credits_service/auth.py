"""HTTP Basic auth for the cron caller (cron-job.org sends Basic credentials).

Fails closed: with no username or password configured, nobody gets in.
Credentials are compared in constant time and never logged. The password
may be configured as a werkzeug hash (``CRON_JOBS_PASSWORD_HASH``) so that
the plain secret need not sit in the service's environment.
"""

import base64
import binascii
import hmac
import logging

from flask import current_app, jsonify, request
from flask_httpauth import HTTPBasicAuth
from werkzeug.datastructures import Authorization
from werkzeug.security import check_password_hash

log = logging.getLogger(__name__)


class StrictBasicAuth(HTTPBasicAuth):
    """Flask-HTTPAuth's Basic parser, without its leniency.

    Its own parser accepts any scheme (``Bearer <base64 of user:password>``
    gets in), skips characters that are not base64 and falls back to latin-1
    for bytes that are not UTF-8. Here only ``Basic`` (any case), strict
    base64 and UTF-8 credentials count; anything else is no credentials.
    """

    def get_auth(self):
        value = request.headers.get("Authorization")
        if not value:
            return None
        scheme, _, token = value.strip(" \t").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(" \t").encode("ascii"), validate=True).decode("utf-8")
        except (UnicodeError, binascii.Error, ValueError):
            return None
        username, colon, password = decoded.partition(":")
        if not colon:
            return None
        return Authorization("basic", {"username": username, "password": password})


basic_auth = StrictBasicAuth(realm="credits_service")


def _same(given, expected):
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


@basic_auth.verify_password
def verify_password(username, password):
    config = current_app.config
    expected_user = config["CRON_JOBS_USERNAME"]
    password_hash = config["CRON_JOBS_PASSWORD_HASH"]
    expected_password = config["CRON_JOBS_PASSWORD"]
    if not expected_user or not (password_hash or expected_password):
        log.error(
            "refused a call: CRON_JOBS_USERNAME and CRON_JOBS_PASSWORD (or CRON_JOBS_PASSWORD_HASH) must be set"
        )
        return False
    # Every check always runs, so timing tells nothing about which failed.
    user_ok = _same(username or "", expected_user)
    if password_hash:
        password_ok = check_password_hash(password_hash, password or "")
    else:
        password_ok = _same(password or "", expected_password)
    # While the cron job is switched to a new password, the old one still works.
    previous = config["CRON_JOBS_PASSWORD_PREVIOUS"]
    previous_ok = bool(previous) & _same(password or "", previous or "\0")
    return user_ok and (password_ok or previous_ok)


@basic_auth.error_handler
def unauthorized(status):
    return jsonify(error="unauthorized", message="valid Basic credentials are required"), status
