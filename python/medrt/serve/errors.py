"""Errors of the service, carried as one type and mapped to gRPC status codes and HTTP JSON."""

from __future__ import annotations

# Code name -> (HTTP status, OpenAI error type). Names are grpc.StatusCode member names.
_HTTP = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "CANCELLED": (499, "cancelled"),
    "DEADLINE_EXCEEDED": (504, "timeout_error"),
    "UNAVAILABLE": (503, "service_unavailable"),
    "INTERNAL": (500, "internal_error"),
}


class ServeError(Exception):
    """A request the service answers with an error: a status code, a message and, for bad
    input, the field at fault (``field`` is named in google.rpc.BadRequest and OpenAI's
    ``param``)."""

    def __init__(self, code: str, message: str, field: str | None = None,
                 http_status: int | None = None) -> None:
        if code not in _HTTP:
            raise ValueError(f"unknown status code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self._http_status = http_status  # a finer HTTP status than the code's (413)

    @property
    def http_status(self) -> int:
        return self._http_status or _HTTP[self.code][0]

    def openai_json(self) -> dict:
        """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": _HTTP[self.code][1],
                          "param": self.field, "code": self.code.lower()}}


def invalid(field: str, message: str) -> ServeError:
    return ServeError("INVALID_ARGUMENT", f"{field}: {message}", field)
