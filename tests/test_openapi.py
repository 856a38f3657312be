"""The generated ``/openapi.json`` (gateway/api/openapi.py): a valid OpenAPI 3.1 document,
every route the application serves documented and nothing documented that is not served,
the guard's and auth's refusals on every operation, and each wire model once as a component.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from openapi_spec_validator import validate

from gateway.api.config import ApiConfig
from gateway.api.openapi import OPERATIONS, Operation, build_document
from gateway.api.routes import create_app, openapi_document
from gateway.api.wire import Error
from gateway.engine.client_tools import ToolMode
from gateway.engine.events import StreamMode
from tests.conftest import EngineFactory

DOC = openapi_document()


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"] == "3.1.0"
    validate(DOC)  # raises on the first problem
    text = json.dumps(DOC)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        name = ref.removeprefix("#/components/schemas/").split("/")[0]
        assert name in DOC["components"]["schemas"], f"{ref} points nowhere"


def test_every_operation_documents_the_refusals_in_front_of_its_handler() -> None:
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            assert {"403", "421"} <= set(responses), where
            if "requestBody" in operation:
                assert {"413", "415"} <= set(responses), where
            if operation.get("security") != []:
                assert "401" in responses, where


async def test_the_served_routes_are_the_documented_ones(make_engine: EngineFactory) -> None:
    app = create_app(await make_engine(spare_processes=0), ApiConfig())
    served = {
        (route.method, _template(route.resource.canonical))
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(m.upper(), p) for p, item in DOC["paths"].items() for m in item}
    assert served == documented
    assert len({(op.method, op.path) for op in app[OPERATIONS]}) == len(app[OPERATIONS])


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a ``$ref`` (and a one-member ``allOf``/``anyOf`` of one) resolved."""
    while True:
        if "$ref" in schema:
            schema = DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif len(schema.get("allOf", ())) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def test_every_turn_documents_the_modes_the_gateway_takes() -> None:
    """Wherever a client can name a stream or tool mode (the ``X-Stream-Mode`` and
    ``X-Tool-Mode`` headers, the body's ``stream_mode`` and ``tool_mode``), each dialect's
    document lists exactly the values the gateway accepts, as the enum it enforces."""
    modes = {"stream": {m.value for m in StreamMode}, "tool": {m.value for m in ToolMode}}
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/messages"):
        operation = DOC["paths"][path]["post"]
        headers = {p["name"]: p["schema"] for p in operation["parameters"] if p["in"] == "header"}
        body = _schema(operation["requestBody"]["content"]["application/json"]["schema"])
        for kind, values in modes.items():
            header = headers[f"X-{kind.title()}-Mode"]
            assert set(header["enum"]) == values, (path, header)
            field = body["properties"][f"{kind}_mode"]
            assert set(field["enum"]) - {None} == values, (path, field)


def _template(canonical: str) -> str:
    return canonical.replace("{model_id:.+}", "{model_id}")


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({})


def test_a_registered_model_becomes_one_component_with_refs() -> None:
    op = Operation("POST", "/x", _ok, "x", "An example.", body={"application/json": Error},
                   responses={})
    doc = build_document([op])
    assert doc["paths"]["/x"]["post"]["requestBody"]["content"]["application/json"] == {
        "schema": {"$ref": "#/components/schemas/Error"}}
    assert doc["components"]["schemas"]["Error"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorDetail",
        "description": "What went wrong; code is the stable name."}
    assert set(doc["paths"]["/x"]["post"]["responses"]) == {"401", "403", "413", "415", "421"}
