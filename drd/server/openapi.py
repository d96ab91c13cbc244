"""A route table's OpenAPI 3.1 document, generated from the table and its pydantic models.

drd.server.routes declares every route once (method, path, handler, permission, models of its
bodies and answers); make_app registers the same table with aiohttp and the security
middleware looks each route's permission up in it. The errors every guarded route or every
route with a body can answer (401/403, 400/413) are added here from the table, as the
middleware and drd.server.bodies produce them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from drd.server.models import Error, OpenApiDocument, OpenApiInfo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: None: anyone; "read": viewer, or anyone with api.public_read; "metrics": anyone, or viewer
#: with api.public_metrics off; else the role needed (roles are ordered)
Permission = Literal["read", "metrics", "viewer", "operator", "coordinator"] | None

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
BEARER = "bearer"


@dataclass(frozen=True)
class Reply:
    """One answer of an operation: its meaning and its body (a model's JSON, or text)."""

    description: str
    body: type[BaseModel] | None = None
    #: the media type of a body that is not JSON (then a string)
    text: str | None = None

    def __post_init__(self) -> None:
        assert (self.body is None) != (self.text is None), "a JSON model or a text media type"


@dataclass(frozen=True)
class Route:
    method: Literal["GET", "POST"]
    path: str
    _: KW_ONLY
    #: the aiohttp route name (the middleware's key to `permission`)
    name: str
    operation_id: str
    handler: Handler
    permission: Permission
    summary: str
    #: status -> answer, besides those added for `permission` and `body`
    replies: Mapping[int, Reply]
    body: type[BaseModel] | None = None
    body_required: bool = False
    #: models whose fields are the path's and the query string's parameters
    path_params: type[BaseModel] | None = None
    query: type[BaseModel] | None = None

    def all_replies(self) -> dict[int, Reply]:
        """`replies` and the errors the middleware and body parsing add."""
        out = dict(self.replies)
        if self.permission is not None:
            out.setdefault(401, Reply("no valid bearer token (WWW-Authenticate: Bearer)", Error))
            out.setdefault(403, Reply("the token's role may not do this", Error))
        if self.body is not None:
            out.setdefault(400, Reply("the body is not JSON, or a field is wrong", Error))
            out.setdefault(413, Reply("the body is larger than 64 KiB", Error))
        return dict(sorted(out.items()))


def schema_modes(routes: Sequence[Route]) -> dict[type[BaseModel], JsonSchemaMode]:
    """Every model the routes name: request bodies as read, answers as written."""
    modes: dict[type[BaseModel], JsonSchemaMode] = {}

    def add(model: type[BaseModel], mode: JsonSchemaMode) -> None:
        assert modes.setdefault(model, mode) == mode, f"{model.__name__} both read and written"

    for route in routes:
        if route.body is not None:
            add(route.body, "validation")
        for reply in route.all_replies().values():
            if reply.body is not None:
                add(reply.body, "serialization")
    add(OpenApiDocument, "serialization")
    return modes


def openapi_document(routes: Sequence[Route], *, title: str, version: str) -> OpenApiDocument:
    modes = schema_modes(routes)
    refs, top = models_json_schema(list(modes.items()), ref_template=REF_TEMPLATE)

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return dict(refs[(model, modes[model])])

    def content(reply: Reply) -> dict[str, Any]:
        if reply.body is not None:
            return {"application/json": {"schema": ref(reply.body)}}
        assert reply.text is not None
        return {reply.text: {"schema": {"type": "string"}}}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "description": _who(route.permission),
        }
        if route.permission == "metrics":
            op["security"] = [{}, {BEARER: []}]
        elif route.permission is not None:
            op["security"] = [{BEARER: []}]
        parameters = _parameters(route.path_params, "path") + _parameters(route.query, "query")
        if parameters:
            op["parameters"] = parameters
        if route.body is not None:
            op["requestBody"] = {
                "required": route.body_required,
                "content": {"application/json": {"schema": ref(route.body)}},
            }
        op["responses"] = {
            str(status): {"description": reply.description, "content": content(reply)}
            for status, reply in route.all_replies().items()
        }
        assert route.method.lower() not in paths.get(route.path, {}), route
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return OpenApiDocument(
        openapi=OPENAPI_VERSION,
        info=OpenApiInfo(title=title, version=version),
        paths=paths,
        components={
            "securitySchemes": {BEARER: {"type": "http", "scheme": "bearer"}},
            "schemas": top.get("$defs", {}),
        },
    )


def _who(permission: Permission) -> str:
    if permission is None:
        return "Anyone."
    if permission == "read":
        return "Role viewer or higher (anyone when api.public_read is on)."
    if permission == "metrics":
        return "Anyone (role viewer or higher when api.public_metrics is off)."
    return f"Role {permission} or higher."


def _parameters(model: type[BaseModel] | None, where: Literal["path", "query"]) -> list[Any]:
    if model is None:
        return []
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        param: dict[str, Any] = {"name": name, "in": where, "required": name in required}
        if "description" in prop:
            param["description"] = prop.pop("description")
        param["schema"] = prop
        out.append(param)
    return out
