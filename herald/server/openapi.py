"""Herald's HTTP API as an OpenAPI 3.1 description, served at ``/v1/openapi.json``.

Written by hand, next to the routes it describes (``app.py``), and kept true by
``tests/integration/test_openapi.py``: every route aiohttp registers is described and
nothing else is; every error code the server can raise is listed, and listed only
where it can happen; every example validates against its schema. The fuzzer
(``tests/integration/test_fuzz_api.py``) then sends what the description allows (and
what it does not) to a real server and checks each answer against it.

Served without credentials, like ``/v1/health``: it says nothing that is not in the
documentation, and tools fetch it before they have a token. Unlike health, not on a
connection whose client certificate was refused (403 with the certificate's code).
"""

from __future__ import annotations

from typing import Any

from ..codec import MAX_SAFE_INTEGER
from ..model import (
    MAX_ID_LENGTH,
    MAX_META_KEY_LENGTH,
    MAX_STREAM_NAME_LENGTH,
    MAX_TYPE_LENGTH,
    Limits,
)
from ..version import __version__

__all__ = ["openapi_document", "ERROR_CODES"]

_LIMITS = Limits()

# --- errors ------------------------------------------------------------------------

# What every request may meet before it reaches its route: an unparseable request,
# over-long headers, a bug.
_ANY = {400: ["bad_request"], 415: ["unsupported_encoding"], 431: ["headers_too_large"],
        500: ["internal_error"]}
# Every /v1 route refuses query parameters it does not take, and any given twice.
# (A header that may appear once, given twice, is bad_request: _ANY.)
_V1 = {400: ["invalid_parameter"]}
# … and every API route but the public ones: who is calling, and how often.
_CALLER = {
    401: ["unauthorized", "invalid_token", "client_cert_required"],
    403: ["client_cert_not_for_client_auth", "client_cert_expired",
          "client_cert_not_yet_valid", "client_cert_unknown_ca", "client_cert_invalid"],
    429: ["rate_limited", "login_backoff"],  # login_backoff: too many wrong tokens
}
_STREAM = {400: ["invalid_stream_name"], 403: ["forbidden"],
           # a name with a "/" is another path, which no route serves
           404: ["not_found"]}

# Every code the server answers with, by status (the API's table in docs/api.md).
ERROR_CODES: dict[int, list[str]] = {}


def _merge(*tables: dict[int, list[str]]) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for table in tables:
        for status, codes in table.items():
            merged.setdefault(status, [])
            merged[status] += [c for c in codes if c not in merged[status]]
            ERROR_CODES.setdefault(status, [])
            ERROR_CODES[status] += [c for c in codes if c not in ERROR_CODES[status]]
    return merged


_REASONS = {400: "Bad request", 401: "No or bad credentials", 403: "Not permitted",
            404: "Not found", 408: "The body came too slowly", 409: "Conflict",
            413: "Too large", 415: "Compressed body", 429: "Too many requests",
            431: "Headers too large", 500: "Server error", 503: "Storage unavailable",
            507: "Storage full"}


def _errors(*tables: dict[int, list[str]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, codes in sorted(_merge(*tables).items()):
        response: dict[str, Any] = {
            "description": f"{_REASONS[status]}: {', '.join(codes)}",
            "content": {"application/json": {"schema": {"allOf": [
                {"$ref": "#/components/schemas/Error"},
                {"properties": {"error": {"properties": {"code": {"enum": codes}}}}},
            ]}}},
        }
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {
                "description": "Bearer on the API, Basic on the dashboard (RFC 9110 §11.6.1)",
                "required": True, "schema": {"type": "string"}}}
        if status == 429:
            response["headers"] = {"Retry-After": {
                "description": "seconds", "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
        responses[str(status)] = response
    return responses


def _ok(description: str, schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {"application/json": media}}


# --- schemas -------------------------------------------------------------------------

_POSITION = {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1}
_STREAM_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_STREAM_NAME_LENGTH,
                "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]*$"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "description": "`code` is stable and machine-readable; other members carry "
                           "what a program needs to react (e.g. `head` on a conflict)",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }},
        "example": {"error": {"code": "expected_head_mismatch",
                              "message": "stream inventory has head 2, not the expected 1",
                              "head": 2, "expected": 1}},
    },
    # Any JSON value every reader reads back the same (codec.number_problem): integers
    # within ±(2**53 - 1), numbers within a double.
    "Value": {
        "description": "any JSON value whose integers are within ±(2⁵³ − 1) and whose "
                       "numbers fit a double (RFC 7493, I-JSON)",
        "anyOf": [
            {"type": "null"}, {"type": "boolean"}, {"type": "string"},
            {"type": "integer", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
            {"type": "number", "not": {"type": "integer"},
             "minimum": -1.7976931348623157e308, "maximum": 1.7976931348623157e308},
            {"type": "array", "items": {"$ref": "#/components/schemas/Value"}},
            {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Value"}},
        ],
    },
    "NewEvent": {
        "type": "object", "required": ["type", "data"], "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_LENGTH},
            "data": {"$ref": "#/components/schemas/Value"},
            "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH,
                   "description": "optional; Herald assigns a UUIDv7 when absent"},
            "meta": {"type": "object", "additionalProperties": {"type": "string"},
                     "propertyNames": {"minLength": 1, "maxLength": MAX_META_KEY_LENGTH}},
        },
    },
    "Batch": {
        "type": "array", "minItems": 1, "maxItems": _LIMITS.max_batch_events,
        "items": {"$ref": "#/components/schemas/NewEvent"},
        "example": [{"type": "ItemAdded", "data": {"sku": "A1", "qty": 5}},
                    {"type": "ItemAdded", "data": {"sku": "B7"}, "id": "add-b7",
                     "meta": {"user": "ann"}}],
    },
    "AppendResult": {
        "type": "object", "required": ["first", "head", "appended", "duplicates"],
        "additionalProperties": False,
        "properties": {
            "first": _POSITION, "head": _POSITION, "appended": _POSITION,
            "duplicates": {"type": "array", "items": {
                "type": "object", "required": ["index", "id", "position"],
                "additionalProperties": False,
                "properties": {"index": _POSITION, "id": {"type": "string"},
                               "position": _POSITION}}},
        },
        "example": {"first": 0, "head": 2, "appended": 2, "duplicates": []},
    },
    "Event": {
        "type": "object", "required": ["position", "id", "type", "data", "meta", "time"],
        "additionalProperties": False,
        "properties": {
            "position": _POSITION, "id": {"type": "string"}, "type": {"type": "string"},
            "data": {}, "meta": {"type": "object", "additionalProperties": {"type": "string"}},
            "time": {"type": "string", "format": "date-time"},
        },
    },
    "ReadPage": {
        "type": "object", "required": ["events", "next", "head"], "additionalProperties": False,
        "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                       "next": _POSITION, "head": _POSITION},
        "example": {"events": [{"position": 1, "id": "add-b7", "type": "ItemAdded",
                                "data": {"sku": "B7"}, "meta": {"user": "ann"},
                                "time": "2026-11-28T10:00:00.123456Z"}],
                    "next": 2, "head": 2},
    },
    "StreamInfo": {
        "type": "object", "required": ["name", "head", "bytes"], "additionalProperties": False,
        "properties": {"name": _STREAM_NAME, "head": _POSITION, "bytes": _POSITION},
        "example": {"name": "inventory", "head": 2, "bytes": 310},
    },
    "StreamList": {
        "type": "object", "required": ["streams"], "additionalProperties": False,
        "properties": {"streams": {"type": "array",
                                   "items": {"$ref": "#/components/schemas/StreamInfo"}}},
        "example": {"streams": [{"name": "inventory", "head": 2, "bytes": 310}]},
    },
    "WhoAmI": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "via", "admin", "configured", "publish", "subscribe"],
        "properties": {
            "name": {"type": "string"},
            "via": {"enum": ["admin token", "token", "client certificate"]},
            "admin": {"type": "boolean"}, "configured": {"type": "boolean"},
            "publish": {"type": "array", "items": {"type": "string"}},
            "subscribe": {"type": "array", "items": {"type": "string"}},
        },
        "example": {"name": "inventory", "via": "client certificate", "admin": False,
                    "configured": True, "publish": ["inventory"], "subscribe": ["*"]},
    },
    "Principals": {
        "type": "object", "additionalProperties": False,
        "required": ["principals", "users", "require_client_cert"],
        "properties": {
            "principals": {"type": "array", "items": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "subject", "token", "publish", "subscribe", "admin"],
                "properties": {
                    "name": {"type": "string"}, "subject": {"type": ["string", "null"]},
                    "token": {"type": "boolean", "description": "whether it has one"},
                    "publish": {"type": "array", "items": {"type": "string"}},
                    "subscribe": {"type": "array", "items": {"type": "string"}},
                    "admin": {"type": "boolean"}}}},
            "users": {"type": "array", "items": {"type": "string"}},
            "require_client_cert": {"type": "boolean"},
        },
    },
    "GatherSkip": {
        "type": "object", "required": ["position", "by", "at"], "additionalProperties": False,
        "properties": {"position": {"type": "integer"}, "by": {"type": "string"},
                       "at": {"type": "string", "format": "date-time"},
                       "reason": {"type": "string"}},
    },
    "GathererStatus": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "stream", "source", "description", "state", "source_position",
                     "source_max", "stream_head", "lag_events", "lag_seconds", "gathered",
                     "conflicts", "started_at"],
        "properties": {
            "name": {"type": "string"}, "stream": _STREAM_NAME,
            "source": {"enum": ["sqlite", "postgres", "mysql", "eventsourcing"]},
            "description": {"type": "string"},
            "state": {"enum": ["starting", "backfilling", "live", "retrying",
                               "stopped-bad-row", "stopped"]},
            "source_position": {"type": ["integer", "null"]},
            "source_max": {"type": ["integer", "null"]},
            "stream_head": _POSITION, "lag_events": {"type": ["integer", "null"]},
            "lag_seconds": {"type": "number"}, "gathered": _POSITION,
            "conflicts": _POSITION, "duplicates": _POSITION,
            "started_at": {"type": "string", "format": "date-time"},
            "last_error": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["code", "message", "at"],
                "additionalProperties": False,
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "at": {"type": "string", "format": "date-time"},
                               "position": {"type": ["integer", "null"]}}}]},
            "skips": {"type": "array", "items": {"$ref": "#/components/schemas/GatherSkip"}},
        },
    },
    "GathererList": {
        "type": "object", "required": ["gatherers"], "additionalProperties": False,
        "properties": {"gatherers": {"type": "array", "items": {
            "$ref": "#/components/schemas/GathererStatus"}}},
        "example": {"gatherers": []},
    },
    "SkipRequest": {
        "type": "object", "required": ["position"], "additionalProperties": False,
        "properties": {"position": {"type": "integer"}},
        "example": {"position": 42},
    },
    "Skipped": {
        "type": "object", "required": ["skip", "gatherer"], "additionalProperties": False,
        "properties": {"skip": {"$ref": "#/components/schemas/GatherSkip"},
                       "gatherer": {"$ref": "#/components/schemas/GathererStatus"}},
    },
    "Health": {
        "type": "object", "required": ["status", "version", "engine"],
        "additionalProperties": False,
        "properties": {"status": {"const": "ok"}, "version": {"type": "string"},
                       "engine": {"type": "string"}},
        "example": {"status": "ok", "version": "0.1.0", "engine": "files"},
    },
}


# --- parameters ---------------------------------------------------------------------

def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_STREAM_PARAMETER = {"name": "stream", "in": "path", "required": True, "schema": _STREAM_NAME,
                     "description": "1–128 characters of A-Z a-z 0-9 . _ -, not starting "
                                    "with '.'"}
_GATHERER_PARAMETER = {"name": "name", "in": "path", "required": True,
                       "schema": {"type": "string", "minLength": 1},
                       "description": "the gatherer's `name` in the config"}
_NO_CREDENTIALS: list[Any] = []


def _paths() -> dict[str, Any]:
    api = (_ANY, _V1, _CALLER)
    return {
        "/": {"get": {
            "operationId": "dashboard", "summary": "The dashboard (HTML)", "tags": ["dashboard"],
            "security": [{"dashboardLogin": []}],
            "responses": {
                "200": {"description": "the page", "content": {"text/html": {
                    "schema": {"type": "string"}}}},
                **_errors(_ANY, {401: ["login_required", "invalid_login",
                                       "client_cert_required"],
                                 403: _CALLER[403], 429: ["login_backoff"]}),
            }}},
        "/favicon.ico": {"get": {
            "operationId": "favicon", "summary": "No icon: 404 once logged in",
            "tags": ["dashboard"], "security": [{"dashboardLogin": []}],
            "responses": _errors(_ANY, {401: ["login_required", "invalid_login",
                                              "client_cert_required"],
                                        403: _CALLER[403], 404: ["not_found"],
                                        429: ["login_backoff"]}),
        }},
        "/v1/health": {"get": {
            "operationId": "health",
            "summary": "Up, and the storage answers: for load balancers",
            "security": _NO_CREDENTIALS,
            "responses": {"200": _ok("serving", {"$ref": "#/components/schemas/Health"}),
                          **_errors(_ANY, _V1, {503: ["storage_unavailable"]})}}},
        "/v1/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This description",
            "description": "No credentials needed; but a refused client certificate "
                           "refuses this too (403, its code). Only `/v1/health` answers "
                           "on such a connection.",
            "security": _NO_CREDENTIALS,
            "responses": {"200": _ok("OpenAPI 3.1", {"type": "object"}),
                          **_errors(_ANY, _V1, {403: _CALLER[403]})}}},
        "/v1/whoami": {"get": {
            "operationId": "whoami", "summary": "The calling principal and its permissions",
            "responses": {"200": _ok("the principal", {"$ref": "#/components/schemas/WhoAmI"}),
                          **_errors(*api)}}},
        "/v1/admin/principals": {"get": {
            "operationId": "adminPrincipals", "summary": "Every principal and user (admins)",
            "responses": {"200": _ok("principals and users",
                                     {"$ref": "#/components/schemas/Principals"}),
                          **_errors(*api, {403: ["forbidden"]})}}},
        "/v1/gatherers": {"get": {
            "operationId": "listGatherers", "summary": "Every gatherer's status (admins)",
            "tags": ["gathering"],
            "responses": {"200": _ok("the gatherers",
                                     {"$ref": "#/components/schemas/GathererList"}),
                          **_errors(*api, {403: ["forbidden"]})}}},
        "/v1/gatherers/{name}": {
            "parameters": [_GATHERER_PARAMETER],
            "get": {
                "operationId": "getGatherer", "summary": "One gatherer's status (admins)",
                "tags": ["gathering"],
                "responses": {"200": _ok("the gatherer",
                                         {"$ref": "#/components/schemas/GathererStatus"}),
                              **_errors(*api, {403: ["forbidden"],
                                               404: ["gatherer_not_found"]})}}},
        "/v1/gatherers/{name}/skip": {
            "parameters": [_GATHERER_PARAMETER],
            "post": {
                "operationId": "skipRow",
                "summary": "Skip the row a gatherer is stopped at (admins; recorded)",
                "tags": ["gathering"],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SkipRequest"}}}},
                "responses": {"200": _ok("skipped", {"$ref": "#/components/schemas/Skipped"}),
                              **_errors(*api, {400: ["invalid_json"], 403: ["forbidden"],
                                               404: ["gatherer_not_found"],
                                               409: ["not_stopped_at_position"]})}}},
        "/v1/streams": {"get": {
            "operationId": "listStreams", "summary": "The streams the caller may read",
            "responses": {"200": _ok("streams with at least one event",
                                     {"$ref": "#/components/schemas/StreamList"}),
                          **_errors(*api)}}},
        "/v1/streams/{stream}": {
            "parameters": [_STREAM_PARAMETER],
            "get": {
                "operationId": "getStream", "summary": "One stream's head and size",
                "responses": {
                    "200": _ok("the stream", {"$ref": "#/components/schemas/StreamInfo"}),
                    **_errors(*api, _STREAM, {404: ["stream_not_found"]})}}},
        "/v1/streams/{stream}/events": {
            "parameters": [_STREAM_PARAMETER],
            "post": {
                "operationId": "append", "summary": "Append a batch, atomically and durably",
                "description": "Streams named `_herald.…` are Herald's own (the gatherers' "
                               "skip log): an append to one is 403 `forbidden`, whoever "
                               "asks.",
                "parameters": [_query("expected_head", _POSITION,
                                      "append only if the stream's head is this")],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Batch"}}}},
                "responses": {
                    "200": _ok("durable", {"$ref": "#/components/schemas/AppendResult"}),
                    **_errors(*api, _STREAM, {
                        400: ["invalid_json", "invalid_event", "empty_batch", "duplicate_id",
                              "invalid_parameter"],
                        408: ["request_timeout"], 409: ["expected_head_mismatch"],
                        413: ["batch_too_large", "event_too_large"],
                        500: ["corrupt_record", "storage_error"],
                        503: ["storage_unavailable"], 507: ["storage_full"]})}},
            "get": {
                "operationId": "read",
                "summary": "Read from a position: a JSON page, Server-Sent Events, or records",
                "description": "The form follows `Accept`: `application/json` (default), "
                               "`text/event-stream`, `application/vnd.herald.records`. The "
                               "streaming forms follow the stream live unless "
                               "`follow=false`.",
                "parameters": [
                    _query("from", {"oneOf": [_POSITION, {"enum": ["head", "end"]}]},
                           "first position, or `head` for new events only"),
                    _query("limit", {"type": "integer", "minimum": 1,
                                     "maximum": _LIMITS.max_read_events, "default": 1000},
                           "events at most (JSON form)"),
                    _query("follow", {"enum": ["true", "false", "1", "0"], "default": "true"},
                           "streaming forms: keep waiting for new events"),
                    _query("heartbeat", {"type": "number", "minimum": 0.05, "maximum": 300,
                                         "default": 15},
                           "streaming forms: seconds between heartbeats when idle"),
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "schema": {"type": "string"},
                     "description": "SSE: resume after this position (refused with "
                                    "`invalid_parameter` unless ASCII digits, a position "
                                    "below 2^63 - 1; empty is none); the other forms "
                                    "ignore it"},
                ],
                "responses": {
                    "200": {"description": "events", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ReadPage"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                        "application/vnd.herald.records": {"schema": {"type": "string"}},
                    }},
                    **_errors(*api, _STREAM, {400: ["invalid_parameter"],
                                              500: ["corrupt_record", "storage_error"]})}},
        },
    }


def _document() -> dict[str, Any]:
    paths = _paths()
    # Answered by aiohttp's router before any route, on every path.
    _merge({404: ["not_found"], 405: ["method_not_allowed"]})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Herald",
            "version": __version__,
            "description": (
                "Herald's HTTP API. Every error is `{\"error\": {\"code\", \"message\", …}}` "
                "with a stable `code`; each operation lists the codes it can answer with. "
                "Every GET also answers HEAD (RFC 9110 §9.3.2); another method on a "
                "described path gets 405 `method_not_allowed`, and an undescribed path 404 "
                "`not_found`. See docs/api.md."),
        },
        "security": [{"bearer": []}, {"clientCertificate": []}],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "the admin token, or a [[principal]]'s token"},
                "clientCertificate": {"type": "mutualTLS",
                                      "description": "a client certificate whose subject "
                                                     "is a [[principal]]'s"},
                "dashboardLogin": {"type": "http", "scheme": "basic",
                                   "description": "a dashboard [[user]]; the dashboard only"},
            },
        },
    }


_DOCUMENT = _document()


def openapi_document() -> dict[str, Any]:
    """The description (the same object every time: do not change it)."""
    return _DOCUMENT
