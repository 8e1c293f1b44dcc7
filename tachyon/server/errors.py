"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and the exception
handlers that make every bad input a 4xx instead of FastAPI's 422 or a 500."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """Raised by handlers; becomes an OpenAI error body with `status`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.headers = message, status, param, headers


def error_body(message: str, status: int, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    elif status == 404:
        kind = "not_found_error"
    elif status == 503:
        kind = "service_unavailable"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(message: str, status: int, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status, headers=headers)


def param_of_value_error(message: str) -> str | None:
    """SamplingParams names the bad field: 'invalid sampling parameter top_p: ...'."""
    prefix = "invalid sampling parameter "
    return message[len(prefix) :].split(":", 1)[0] if message.startswith(prefix) else None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e.message, e.status, e.param, e.headers)

    @app.exception_handler(ValueError)
    async def _value_error(_: Request, e: ValueError) -> JSONResponse:
        return error_response(str(e), 400, param_of_value_error(str(e)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors() or [{"msg": "invalid request"}]
        if errors[0].get("type") == "json_invalid":
            return error_response(f"the body is not valid JSON: {errors[0].get('ctx', {}).get('error', '')}", 400)
        message = "; ".join(f"{_field(err)}: {err.get('msg')}" for err in errors)
        top_field = _field(errors[0]).split(".")[0]  # "prompt", not "prompt.list[int]" from a union
        return error_response(message, 400, top_field or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else HTTPStatus(e.status_code).phrase
        return error_response(message, e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        logger.exception("unexpected error while handling a request")
        return error_response(f"internal error: {type(e).__name__}", 500)


def _field(err: dict) -> str:
    return ".".join(str(part) for part in err.get("loc", ()) if part != "body")
