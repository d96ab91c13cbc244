"""Request and response bodies through the models (drd.server.models), and JSON errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from drd.server.keys import BODY_KEY
from drd.server.models import Error, ErrorDetail

M = TypeVar("M", bound=BaseModel)


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as the JSON it is served as: fields the handler did not set are left out."""
    return model.model_dump(mode="json", exclude_unset=True)


def reply(
    model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(dump(model), status=status, headers=headers)


def error_body(
    status: int,
    message: str,
    *,
    field: str | None = None,
    busy: list[str] | None = None,
    drill_id: str | None = None,
) -> Error:
    extra: dict[str, Any] = {"field": field, "busy": busy, "drill_id": drill_id}
    return Error(
        error=ErrorDetail(
            code=status, message=message, **{k: v for k, v in extra.items() if v is not None}
        )
    )


def error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    busy: list[str] | None = None,
    drill_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON error answer (drd.server.models.Error)."""
    body = error_body(status, message, field=field, busy=busy, drill_id=drill_id)
    return reply(body, status, headers)


def bad_field(field: str, message: str) -> web.Response:
    return error(400, f"{field}: {message}", field=field)


def refusal(
    exc: type[web.HTTPException], message: str, *, field: str | None = None
) -> web.HTTPException:
    """A JSON error to raise (from helpers that return a value otherwise)."""
    assert exc.status_code >= 400
    body = error_body(exc.status_code, message, field=field)
    return exc(text=json.dumps(dump(body)), content_type="application/json")


async def read_body(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body; 400 naming the field on any problem. No body is {}."""
    if not request.can_read_body:
        raw: Any = {}
    else:
        try:
            raw = await request.json()
        except json.JSONDecodeError as exc:
            raise refusal(web.HTTPBadRequest, f"body is not JSON: {exc}") from None
    request[BODY_KEY] = raw
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise refusal(web.HTTPBadRequest, f"{field}: {first['msg']}", field=field) from None
