"""Errors the HTTP API answers with: a status, a machine-readable code, a message and the parameter at fault."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """A refused request: rendered as `{"error": {"code", "message", "param"}}` with `status` and `headers`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        key_id: int | None = None,
        logged: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        self.key_id = key_id
        self.logged = logged  # True when the request's log row is already written (a PRADA block)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "param": self.param}}


def invalid_input(param: str, message: str) -> ApiError:
    """422 `invalid_input`: the request parsed but its values cannot be given to the model."""
    return ApiError(422, "invalid_input", message, param)


__all__ = ["ApiError", "invalid_input"]
