"""The one error envelope and the one exception -> HTTP status mapping of the ingress."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.common.contracts import ErrorFrame
from deployments.common.errors import describe_validation_errors
from serve_app.log import LOGGER, request_id_of

logger = logging.getLogger(LOGGER)


class APIError(Exception):
    """Raise anywhere in the ingress to answer with an OpenAI error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.frame = ErrorFrame(status, message, param=param, code=code)
        self.headers = headers


def error_response(frame: ErrorFrame, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        frame.envelope(), status_code=frame.status, headers=headers or frame.headers
    )


def server_error(request_id: str, status: int = 500, message: str | None = None) -> JSONResponse:
    """A 5xx envelope that names the request id and nothing internal."""
    text = message or "The server had an error while processing your request."
    return error_response(ErrorFrame(status, f"{text} (request id: {request_id})"))


def install_error_handlers(app: FastAPI) -> None:
    """Route every error FastAPI or our code raises into the envelope."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.frame, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(
            err.get("type") == "json_invalid" or tuple(err["loc"]) == ("body",) for err in errors
        ):
            message = "We could not parse the JSON body of your request: send a JSON object."
            return error_response(ErrorFrame(400, message))
        message, param = describe_validation_errors(errors)
        return error_response(ErrorFrame(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, APIError):  # raised while FastAPI read the body
            return error_response(exc.__cause__.frame, exc.__cause__.headers)
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}."
        else:
            message = str(exc.detail)
        return error_response(ErrorFrame(exc.status_code, message), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request)
        logger.exception("unhandled error [request_id=%s]", request_id)
        return server_error(request_id)
