"""The API server's Status errors, as plain exceptions the pure modules can raise.

The store, the patches and the selectors fail the way the API server does (404 NotFound, 409 Conflict,
422 Invalid with causes, ...). They raise `ApiError` rather than kmock's exception so that they stay
free of kmock and aiohttp; the request handler renders it as a `Status` object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tinymlops.stack.emulator.resources import ResourceType


class ApiError(Exception):
    """A failed request: the HTTP status, the Status reason and message, and the Status details."""

    def __init__(self, status: int, reason: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.details = status, reason, message, details


def error(status: int, reason: str, message: str, **details: Any) -> ApiError:
    return ApiError(status, reason, message, details)


def not_found(rt: ResourceType, name: str) -> ApiError:
    return error(404, "NotFound", f'{rt.qualified} "{name}" not found', name=name, group=rt.group, kind=rt.plural)


def invalid(rt: ResourceType, name: str, problems: Sequence[str]) -> ApiError:
    causes = []
    for problem in problems:
        field, _, text = problem.partition(": ")
        causes.append({"reason": "FieldValueInvalid", "message": text or problem, "field": field})
    message = f'{rt.kind}.{rt.group or "core"} "{name}" is invalid: ' + "; ".join(problems)
    return error(422, "Invalid", message, name=name, group=rt.group, kind=rt.kind, causes=causes)


def conflict(rt: ResourceType, name: str) -> ApiError:
    message = (
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": '
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    return error(409, "Conflict", message, name=name, group=rt.group, kind=rt.plural)
