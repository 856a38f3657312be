"""The OpenAPI 3.1 document of the API, served at ``/openapi.json``, generated from the
routes themselves.

Every route is one :class:`Operation`: method, path, handler, the wire model of its
request body, and its :class:`Reply` per status (a pydantic model per content type, the
model of one event's ``data`` for ``text/event-stream``, and the headers it sends).
:func:`add_operations` puts operations on an aiohttp application (the handler of one with a
body is wrapped in :func:`gateway.api.guard.accepts`, so another Content-Type is 415) and
:func:`openapi_document` renders them: each model once under ``#/components/schemas``
(pydantic's ``model_json_schema``, request bodies in validation mode, replies in
serialization mode), and on every operation the refusals of the request guard (403, 421,
415 with a body), the auth middleware (401 unless public) and the body limit (413) in the
shape of the operation's ``error`` model.

A dialect module declares a tuple ``OPERATIONS`` and the app factory
(:func:`gateway.api.routes.create_app`) lists it in ``routes.OPERATIONS``: nothing is
served that the document does not describe, and nothing described that is not served.
Model names are component names: give a dialect's models a prefix where a name could
clash (two different ``Usage`` models get module-qualified names).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from gateway import __version__
from gateway.api.guard import JSON as JSON  # re-exported: the dialects declare bodies
from gateway.api.guard import accepts
from gateway.api.wire import Error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: a pydantic model (emitted once as a component and referenced), or an inline JSON Schema
Schema = type[BaseModel] | Mapping[str, Any]

REF_TEMPLATE = "#/components/schemas/{model}"
EVENT_STREAM = "text/event-stream"
STRING: Mapping[str, Any] = {"type": "string"}


@dataclass(frozen=True)
class Param:
    """A request parameter (header, path or query) or, in :attr:`Reply.headers`, a response
    header (``where`` and ``required`` are then unused)."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: dict(STRING))
    where: Literal["header", "path", "query"] = "header"
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """One documented response status."""

    description: str
    #: media type -> schema of the body
    content: Mapping[str, Schema] = field(default_factory=dict)
    #: for ``text/event-stream``: the model of one event's ``data`` JSON
    #: (emitted as ``x-event-schema``; the tests validate every event against it)
    events: type[BaseModel] | None = None
    headers: Sequence[Param] = ()


def json_reply(description: str, model: Schema, headers: Sequence[Param] = ()) -> Reply:
    return Reply(description, {JSON: model}, headers=headers)


def error_reply(
    description: str, headers: Sequence[Param] = (), model: type[BaseModel] = Error
) -> Reply:
    return Reply(description, {JSON: model}, headers=headers)


RETRY_AFTER = Param(
    "Retry-After", "Seconds to wait before retrying.", {"type": "string", "pattern": "^[0-9]+$"}
)

#: the response header of every turn (and of its errors once the conversation is known)
CONVERSATION = Param(
    "X-Conversation-Id", "The conversation this request used; send it back in the "
    "X-Conversation-Id request header to pin the conversation.")
#: the request headers every dialect's turn endpoint reads (gateway/api/exchange.py)
TURN_PARAMS = (
    Param("X-Conversation-Id", "Names the conversation."),
    Param("X-Session-Id", "Same as X-Conversation-Id."),
    Param("X-Stream-Mode", "How answer text streams (overrides the body's stream_mode).",
          {"enum": ["smart", "final", "verbose"]}),
    Param("X-Tool-Mode", "How the client's tools are used (overrides tool_mode).",
          {"enum": ["agent", "client", "hybrid"]}),
)


@dataclass(frozen=True)
class Operation:
    """One route: what it takes, what it answers, and the handler that does it."""

    method: Literal["GET", "POST", "DELETE"]
    path: str  # the OpenAPI template, e.g. ``/v1/models/{model_id}``
    handler: Handler
    operation_id: str
    summary: str
    responses: Mapping[int, Reply]
    #: request body: media type -> schema (at most one media type; others are 415)
    body: Mapping[str, Schema] = field(default_factory=dict)
    params: Sequence[Param] = ()
    #: no API key needed (``security: []``), as for ``/health``
    public: bool = False
    #: the body of the guard's, the auth middleware's and the body limit's refusals here
    error: type[BaseModel] = Error
    #: aiohttp's pattern when it differs from ``path`` (e.g. ``/v1/models/{model_id:.+}``)
    route: str = ""
    description: str = ""


OPERATIONS: web.AppKey[list[Operation]] = web.AppKey("openapi_operations", list)
_DOCUMENT: web.AppKey[dict[str, bytes]] = web.AppKey("openapi_document", dict)


def add_operations(app: web.Application, operations: Iterable[Operation]) -> None:
    """Serve ``operations`` on ``app`` and list them in its ``/openapi.json``."""
    registered = app.setdefault(OPERATIONS, [])
    for op in operations:
        if len(op.body) > 1:
            raise ValueError(f"{op.path}: one request media type per operation")
        handler = op.handler
        for media_type in op.body:
            handler = accepts(media_type)(handler)
        app.router.add_route(op.method, op.route or op.path, handler)
        registered.append(op)


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the document of the application's operations (built once)."""
    cache = request.app.setdefault(_DOCUMENT, {})
    if "body" not in cache:
        operations: list[Operation] = request.app[OPERATIONS]
        cache["body"] = json.dumps(build_document(operations)).encode()
    return web.Response(body=cache["body"], content_type=JSON)


# --------------------------------------------------------------------------- rendering


class _Generator(GenerateJsonSchema):
    """pydantic's generator without a ``title`` on every property (noise in a document)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _refusals(op: Operation) -> dict[int, Reply]:
    """What the middlewares in front of every handler can answer."""
    refusals = {
        403: error_reply(
            "A browser request from a web page whose origin is neither the gateway's own nor "
            "in server.allowed_origins (code forbidden_origin).", model=op.error),
        421: error_reply(
            "The Host header names neither loopback, the bound address nor one of "
            "server.allowed_hosts (code host_not_allowed; DNS rebinding).", model=op.error),
    }
    if not op.public:
        refusals[401] = error_reply(
            "Missing or wrong gateway API key (only when GATEWAY_API_KEYS is set).",
            model=op.error)
    if op.body:
        refusals[413] = error_reply(
            "The request body is larger than server.max_body_mb.", model=op.error)
        refusals[415] = error_reply(
            "The body's Content-Type is not the one the endpoint takes (code "
            "unsupported_media_type).", model=op.error)
    return refusals


def _models(operations: Sequence[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}

    def add(schema: Schema | None, mode: JsonSchemaMode) -> None:
        if isinstance(schema, type):
            seen[(schema, mode)] = None

    for op in operations:
        for schema in op.body.values():
            add(schema, "validation")
        for reply in {**_refusals(op), **op.responses}.values():
            for schema in reply.content.values():
                add(schema, "serialization")
            add(reply.events, "serialization")
    return list(seen)


def _headers(params: Sequence[Param]) -> dict[str, Any]:
    return {p.name: {"description": p.description, "schema": dict(p.schema)} for p in params}


def build_document(operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations`` (a new dict; callers may change it)."""
    refs, top = models_json_schema(
        _models(operations), ref_template=REF_TEMPLATE, schema_generator=_Generator
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    def schema_of(schema: Schema | None, mode: JsonSchemaMode) -> dict[str, Any]:
        if isinstance(schema, type):
            return dict(refs[(schema, mode)])
        return copy.deepcopy(dict(schema or STRING))

    def reply(r: Reply) -> dict[str, Any]:
        out: dict[str, Any] = {"description": r.description}
        if r.headers:
            out["headers"] = _headers(r.headers)
        content = {mt: {"schema": schema_of(s, "serialization")} for mt, s in r.content.items()}
        if r.events is not None:
            content[EVENT_STREAM] = {
                "schema": dict(STRING),
                "x-event-schema": schema_of(r.events, "serialization"),
            }
        if content:
            out["content"] = content
        return out

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        operation: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
        if op.description:
            operation["description"] = op.description
        if op.public:
            operation["security"] = []
        if op.params:
            operation["parameters"] = [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required or p.where == "path",
                    "description": p.description,
                    "schema": dict(p.schema),
                }
                for p in op.params
            ]
        if op.body:
            operation["requestBody"] = {
                "required": True,
                "content": {mt: {"schema": schema_of(s, "validation")}
                            for mt, s in op.body.items()},
            }
        replies = {**_refusals(op), **op.responses}
        operation["responses"] = {str(s): reply(replies[s]) for s in sorted(replies)}
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Claude Max Gateway",
            "version": __version__,
            "description": "An OpenAI-compatible endpoint in front of the real Claude Code "
            "CLI. Errors are OpenAI error JSON. When GATEWAY_API_KEYS is set, /v1/ needs "
            "one of its keys ('Authorization: Bearer <key>' or 'X-Api-Key: <key>') and "
            "/health without one shows only status and version. Browser requests from "
            "other origins (403) and requests addressed to other hosts (421) are refused "
            "first.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the keys in the GATEWAY_API_KEYS environment "
                    "variable; needed only when it is set.",
                }
            },
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }
    return document

