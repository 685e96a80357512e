"""One error type for every HTTP answer that is not an image, rendered in the shape of the API that was called."""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse

OPENAI_PREFIX = "/v1/"

# OpenAI's error "type" per status.
_OPENAI_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """A request answered with `status` and a one-line message; `param` names the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(path: str, error: ApiError) -> dict:
    """OpenAI's {"error": {message, type, param, code}} under /v1/, else {"error": reason, "detail": message}
    as AUTOMATIC1111's API (a FastAPI app) answers."""
    if path.startswith(OPENAI_PREFIX):
        kind = _OPENAI_TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
        return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}
    return {"error": HTTPStatus(error.status).phrase, "detail": error.message}


def error_response(path: str, error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(path, error), status_code=error.status, headers=error.headers)


def validation_error(errors: list[dict]) -> ApiError:
    """pydantic's errors as a 400 whose one line names the first field at fault (OpenAI's `param`)."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, "the body is not valid JSON")
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return ApiError(400, "the body must be a JSON object, sent with Content-Type: application/json")
    message = first.get("msg", "invalid value")
    return ApiError(400, f"{param}: {message}" if param else f"the body is invalid: {message}", param=param)
