"""Label and field selectors, from their string forms in `?labelSelector=` and `?fieldSelector=`.

Lists, watches and deletecollection filter with them (kopf watches with label selectors, kubectl sends
both). Each selector becomes a predicate; an unparsable one is a 400 BadRequest, as from the API server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tinymlops.stack.emulator.errors import error
from tinymlops.stack.emulator.resources import Obj

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[^\s!=,()]+)\s*(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<val>\([^)]*\)|[^,\s]*))?\s*$"
)


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in [*parts, current] if p.strip()]


def _requirement(key: str, op: str, values: set[str], negated: bool) -> Callable[[Mapping[str, str]], bool]:
    def test(labels: Mapping[str, str]) -> bool:
        if not op:
            return (key in labels) != negated
        return (labels.get(key) in values) == (op in ("=", "==", "in"))

    return test


def label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """The string form of a label selector (`a=b,c!=d,e in (x,y),!f,g`) as a predicate over labels."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split_selector(text):
        match = _REQUIREMENT.match(part)
        if match is None:
            raise error(400, "BadRequest", f"unable to parse requirement: {part!r}")
        values = {v.strip() for v in (match["val"] or "").strip("()").split(",")}
        tests.append(_requirement(match["key"], (match["op"] or "").strip(), values, bool(match["neg"])))
    return lambda labels: all(test(labels) for test in tests)


def _field_test(path: str, op: str, value: str) -> Callable[[Obj], bool]:
    def test(obj: Obj) -> bool:
        return (str(dig(obj, path.split(".")) or "") == value) != (op == "!=")

    return test


def field_selector(text: str) -> Callable[[Obj], bool]:
    """`metadata.name=x,spec.nodeName!=y` as a predicate over objects (dotted paths, = / == / !=)."""
    tests: list[Callable[[Obj], bool]] = []
    for part in _split_selector(text):
        match = re.match(r"^\s*([^!=\s]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if match is None:
            raise error(400, "BadRequest", f"invalid field selector: {part!r}")
        tests.append(_field_test(*match.groups()))
    return lambda obj: all(test(obj) for test in tests)


def query_selector(params: Mapping[str, str]) -> Callable[[Obj], bool]:
    """Both selectors of a request's query parameters as one predicate over objects."""
    labels = label_selector(params.get("labelSelector", ""))
    fields = field_selector(params.get("fieldSelector", ""))
    return lambda obj: labels(obj["metadata"].get("labels") or {}) and fields(obj)


def dig(value: Any, path: Sequence[str]) -> Any:
    """The value at a path of keys into nested dicts, or None where the path ends early."""
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value
