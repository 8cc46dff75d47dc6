"""OpenAI-style error objects: `{"error": {"message", "type", "param", "code"}}` with a 4xx status for
every client mistake, so client libraries raise their usual exceptions (BadRequestError, ...)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 499: "client_closed_request",
          500: "internal_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def from_validation_error(e: ValidationError) -> APIError:
    """The first pydantic error, named by its JSON path (`messages.0.content`)."""
    err = e.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {err['msg'].removeprefix('Invalid JSON: ')}",
                           code="invalid_json")
    loc = [str(p) for p in err.get("loc", ())]
    members = _union_members(e, err["loc"])
    if members:  # a union field (prompt, stop, content): say which shapes it takes
        head = loc[: loc.index(members[0])] if members[0] in loc else loc[:1]
        param = ".".join(head)
        return bad_request(f"'{param}' must be one of: {', '.join(members)}", param, code="invalid_type")
    param = ".".join(loc) or None
    msg = err["msg"]
    if err["type"] == "missing":
        msg = f"'{param}' is a required property"
    elif err["type"] == "model_type":
        msg = "the request body must be a JSON object" if not loc else f"'{param}' must be an object"
    elif param:
        got = err.get("input")
        got = f" (got {got!r})" if got is not None and len(repr(got)) < 80 else ""
        msg = f"'{param}': {msg}{got}"
    return bad_request(msg, param, code="invalid_value" if err["type"] != "missing" else "missing_required")


_SCALARS = ("str", "int", "float", "bool")


def _is_member(p) -> bool:
    return isinstance(p, str) and (p in _SCALARS or "[" in p)


def _union_members(e: ValidationError, loc: tuple) -> list[str]:
    """Member types pydantic tried for the union field of the first error (they appear in the error
    paths after the field's own path), in order; [] when that field is no union."""
    cut = next((i for i, p in enumerate(loc) if _is_member(p)), None)
    if cut is None:
        return []
    seen: list[str] = []
    for err in e.errors(include_url=False):
        other = err.get("loc", ())
        if tuple(other[:cut]) == tuple(loc[:cut]) and len(other) > cut and _is_member(other[cut]) \
                and other[cut] not in seen:
            seen.append(other[cut])
    return seen


def install(app: FastAPI) -> None:
    """Every error the app can produce leaves as an OpenAI error object."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        msg = {404: f"no route {request.url.path}", 405: f"method {request.method} is not allowed on "
               f"{request.url.path}"}.get(e.status_code, str(e.detail))
        return APIError(e.status_code, msg).response()

    @app.exception_handler(Exception)
    async def _server_error(request: Request, e: Exception):  # a bug in the server, not the client's fault
        return APIError(500, f"internal server error: {type(e).__name__}: {e}").response()
