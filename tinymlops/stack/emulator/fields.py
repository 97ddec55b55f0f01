"""Server-side field validation: the `fieldValidation` query parameter and the fields it is about.

Since Kubernetes 1.27 the API server itself checks a request body for unknown fields (those the structural
schema prunes) and duplicate fields, and the client says what to do about them: `Strict` refuses the
request (400 BadRequest, "strict decoding error", naming each field), `Warn` (the server's default) serves
it with one `Warning` header per field, `Ignore` drops them silently. kubectl sends `Strict` unless told
otherwise, once the OpenAPI v3 document says the endpoint takes the parameter. Pure: no HTTP here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tinymlops.stack.emulator.errors import ApiError, error
from tinymlops.stack.emulator.resources import ResourceType

DIRECTIVES = ("Ignore", "Strict", "Warn")


def directive(params: Mapping[str, str]) -> str:
    """The request's fieldValidation directive; the API server's default is Warn."""
    value = params.get("fieldValidation") or "Warn"
    if value not in DIRECTIVES:
        supported = ", ".join(f'"{d}"' for d in DIRECTIVES)
        raise error(400, "BadRequest", f'fieldValidation: Unsupported value: "{value}": supported values: {supported}')
    return value


class _Pairs(dict[str, Any]):
    """A JSON object that remembers the keys it saw more than once."""

    repeated: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(pairs)
    counts = Counter(key for key, _ in pairs)
    obj.repeated = [key for key, count in counts.items() if count > 1]
    return obj


def duplicate_fields(body: bytes) -> list[str]:
    """Paths of the keys a JSON body repeats (`spec.source`); json.loads would silently keep the last one."""
    try:
        data = json.loads(body, object_pairs_hook=_pairs) if body else None
    except ValueError:
        return []
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, _Pairs):
            found.extend(f"{path}.{key}" if path else key for key in value.repeated)
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    walk(data, "")
    return found


def field_messages(unknown: Sequence[str], duplicates: Sequence[str]) -> list[str]:
    """The API server's wording, one message per field (used for warnings and strict errors alike)."""
    return [f'duplicate field "{path}"' for path in duplicates] + [f'unknown field "{path}"' for path in unknown]


def strict_error(rt: ResourceType, messages: Sequence[str]) -> ApiError:
    """What the API server answers a `fieldValidation=Strict` request whose body has unknown/duplicate fields."""
    message = (f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
               f"strict decoding error: {', '.join(messages)}")
    return error(400, "BadRequest", message)
