"""The OpenAPI document of the HTTP interface, served at ``/api/openapi.json``.

tests/test_openapi.py keeps it true: every route is documented, and
schemathesis calls each operation and checks the answers against it.
"""

from flask import Blueprint, jsonify

bp = Blueprint("openapi", __name__)


def _error(description, example):
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/Error"},
                "example": {"error": example, "message": "…"},
            }
        },
    }


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": {"$ref": schema}}}}


COMMON_ERRORS = {
    "401": {
        **_error("Missing or wrong Basic credentials, or none configured on the server.", "unauthorized"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Basic realm=…"}},
    },
    "403": _error("The caller's address is outside CRON_JOBS_ALLOWED_IPS.", "forbidden"),
    "413": _error("A request body was sent; the endpoint takes none.", "request_entity_too_large"),
    "429": {
        **_error("Too many failed logins from this address.", "too_many_requests"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    },
    "500": _error("Unexpected failure; see the service log.", "internal_error"),
}

RUN_ANSWERS = {
    "200": _json("#/components/schemas/Summary", "The run finished; the summary of what it did."),
    "202": {
        "description": "async=true: the run goes on in the background.",
        "headers": {"Location": {"schema": {"type": "string"}, "description": "The run's status URL."}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Started"}}},
    },
    "400": _error("A query parameter is unknown, repeated or has a bad value; nothing ran.", "bad_request"),
    "409": {
        "description": "Another run is in progress; this call changed nothing.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunInProgress"}}},
    },
    "503": _error("The database cannot be reached; nothing was changed.", "database_unavailable"),
    **COMMON_ERRORS,
    "500": _error(
        "The run stopped part way (committed batches stay; the next call finishes the rest), "
        "or an unexpected failure.",
        "run_failed",
    ),
}

RUN_OPERATION = {
    "summary": "Expire due credits and grant this month's credits",
    "description": (
        "Runs the daily job once: expires every grant past its expiration date, then grants "
        "this period's credits to each entitled user who has not had them yet. Safe to repeat."
    ),
    "security": [{"basicAuth": []}],
    "parameters": [
        {
            "name": "dryRun",
            "in": "query",
            "required": False,
            "description": "true: report what a run would do and change nothing.",
            "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
        },
        {
            "name": "async",
            "in": "query",
            "required": False,
            "description": "true: answer 202 at once and run in the background; poll the Location.",
            "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
        },
        {
            "name": "shard",
            "in": "query",
            "required": False,
            "description": "K/N: only the users of shard K of N (a stable hash of the user id).",
            "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,3}/[1-9][0-9]{0,3}$"},
        },
        {
            "name": "X-Request-Id",
            "in": "header",
            "required": False,
            "description": "Recorded with the run, cut to 200 characters (cron-job.org: %cjo:uuid4%).",
            "schema": {"type": "string"},
        },
    ],
    "responses": RUN_ANSWERS,
}

RUN_LOOKUP = {
    "security": [{"basicAuth": []}],
    "responses": {
        "200": _json("#/components/schemas/Run", "The run's history record."),
        "404": _error("No such run.", "not_found"),
        **COMMON_ERRORS,
    },
}

COUNTS = {"type": "integer", "minimum": 0}

DOCUMENT = {
    "openapi": "3.0.3",
    "info": {
        "title": "credits_service",
        "version": "1",
        "description": "The daily credits job of a MkSaaS site, called by cron-job.org or any cron.",
    },
    "paths": {
        "/api/distribute-credits": {"get": RUN_OPERATION, "post": RUN_OPERATION},
        "/api/distribute-credits/": {"get": RUN_OPERATION, "post": RUN_OPERATION},
        "/api/distribute-credits/runs/latest": {"get": {"summary": "The latest run", **RUN_LOOKUP}},
        "/api/distribute-credits/runs/{run_id}": {
            "get": {
                "summary": "One run, by the runId of its summary",
                "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                **RUN_LOOKUP,
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers (no database, no credentials)",
                "responses": {"200": _json("#/components/schemas/Health", "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the database answers and its schema is at this code's migration",
                "responses": {
                    "200": _json("#/components/schemas/Health", "Ready."),
                    "503": _json("#/components/schemas/Health", "Not ready; reason says why."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics, from the run history",
                "security": [{"basicAuth": []}],
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **{code: COMMON_ERRORS[code] for code in ("401", "403", "500")},
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {}}}},
            }
        },
    },
    "components": {
        "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "unavailable"]},
                    "reason": {"type": "string"},
                    "schema": {"type": "string"},
                },
            },
            "Started": {
                "type": "object",
                "required": ["message", "runId", "status", "statusUrl"],
                "properties": {
                    "message": {"type": "string"},
                    "runId": {"type": "string"},
                    "status": {"type": "string", "enum": ["running"]},
                    "statusUrl": {"type": "string"},
                },
            },
            "RunInProgress": {
                "type": "object",
                "required": ["error", "message", "runId", "startedAt"],
                "properties": {
                    "error": {"type": "string", "enum": ["run_in_progress"]},
                    "message": {"type": "string"},
                    "runId": {"type": "string", "nullable": True},
                    "startedAt": {"type": "string", "nullable": True},
                },
            },
            "Summary": {
                "type": "object",
                "required": [
                    "message", "usersCount", "processedCount", "errorCount", "runId", "period",
                    "dryRun", "durationMs", "expired", "granted", "skipped", "unknownPriceIds", "failedUsers",
                ],
                "properties": {
                    "message": {"type": "string"},
                    "usersCount": COUNTS,
                    "processedCount": COUNTS,
                    "errorCount": COUNTS,
                    "runId": {"type": "string"},
                    "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                    "dryRun": {"type": "boolean"},
                    "durationMs": COUNTS,
                    "expired": {
                        "type": "object",
                        "required": ["usersCount", "credits", "clampedUsers"],
                        "properties": {"usersCount": COUNTS, "credits": COUNTS, "clampedUsers": COUNTS},
                    },
                    "granted": {
                        "type": "object",
                        "required": ["MONTHLY_REFRESH", "SUBSCRIPTION_RENEWAL", "LIFETIME_MONTHLY"],
                        "properties": {"MONTHLY_REFRESH": COUNTS, "SUBSCRIPTION_RENEWAL": COUNTS,
                                       "LIFETIME_MONTHLY": COUNTS},
                    },
                    "skipped": {
                        "type": "object",
                        "required": ["alreadyGranted", "monthly", "unknownPrice", "noCredits"],
                        "properties": {"alreadyGranted": COUNTS, "monthly": COUNTS, "unknownPrice": COUNTS,
                                       "noCredits": COUNTS},
                    },
                    "unknownPriceIds": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
                    "failedUsers": {
                        "type": "array",
                        "maxItems": 20,
                        "items": {
                            "type": "object",
                            "required": ["userId", "reason"],
                            "properties": {"userId": {"type": "string"}, "reason": {"type": "string"}},
                        },
                    },
                },
            },
            "Run": {
                "type": "object",
                "required": ["runId", "trigger", "period", "dryRun", "status", "startedAt"],
                "properties": {
                    "runId": {"type": "string"},
                    "trigger": {"type": "string", "enum": ["http", "cli"]},
                    "period": {"type": "string"},
                    "dryRun": {"type": "boolean"},
                    "shard": {"type": "string", "nullable": True},
                    "requestId": {"type": "string", "nullable": True},
                    "status": {"type": "string", "enum": ["running", "succeeded", "failed", "abandoned"]},
                    "startedAt": {"type": "string"},
                    "finishedAt": {"type": "string", "nullable": True},
                    "summary": {"allOf": [{"$ref": "#/components/schemas/Summary"}], "nullable": True},
                    "error": {"type": "string", "nullable": True},
                },
            },
        },
    },
}


@bp.get("/api/openapi.json")
def document():
    return jsonify(DOCUMENT)
