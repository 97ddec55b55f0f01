"""CRD schemas applied in-process: defaulting and validation the way the API server does them (pure).

The API server checks custom resources against each CRD's `openAPIV3Schema`, an OpenAPI 3.0
dialect of JSON Schema.  We translate that dialect to JSON Schema draft 4 (whose boolean
`exclusiveMinimum` is OpenAPI 3.0's) and let `jsonschema` do the checking, so the local API
emulator and the tests reject the objects a real cluster would reject, with messages that
name the field: `spec.accuracyBudget: 1.5 is greater than the maximum of 1`.

CEL rules (`x-kubernetes-validations`) are evaluated by `tinymlops.kube.cel` once the schema itself holds.
Not covered: transition rules (`oldSelf`) and ObjectMeta checks.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

from tinymlops.errors import SpecError

Schema = dict[str, Any]
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_NOT_IN_JUNCTORS = ("description", "type", "default", "additionalProperties", "nullable")
_NOT_STRUCTURAL = ("uniqueItems", "$ref", "patternProperties", "definitions", "dependencies")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

_FORMATS = FormatChecker(formats=())  # only the Kubernetes formats below; unknown formats pass, as in Kubernetes


def _date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(_RFC3339.match(value) and datetime.datetime.fromisoformat(value))


def _date(value: object) -> bool:
    return not isinstance(value, str) or bool(datetime.date.fromisoformat(value))


def _byte(value: object) -> bool:
    return not isinstance(value, str) or base64.b64decode(value, validate=True) is not None


def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


for _name, _check, _raises in (
    ("date-time", _date_time, ValueError),
    ("date", _date, ValueError),
    ("byte", _byte, binascii.Error),
    ("int32", _int32, ()),
    ("int64", _int64, ()),
):
    _FORMATS.checks(_name, raises=_raises)(_check)


def _unique_map_keys(validator: Any, keys: Sequence[str], instance: Any, schema: Schema) -> Iterator[ValidationError]:
    """`x-kubernetes-list-type: map`: no two items may share their key fields (the server says Duplicate value)."""
    if not isinstance(instance, list):
        return
    seen: set[tuple[Any, ...]] = set()
    for index, item in enumerate(instance):
        if isinstance(item, dict):
            key = tuple(repr(item.get(k)) for k in keys)
            if key in seen:
                shown = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
                yield ValidationError(f"Duplicate value: another item has {shown}", path=[index])
            seen.add(key)


_Validator = validators.extend(Draft4Validator, {"x-list-map-keys": _unique_map_keys})


class CRDRegistry:
    """The schemas of some CRDs, by (apiVersion, kind), for every served version."""

    def __init__(self, crds: Iterable[Mapping[str, Any]]) -> None:
        self.crds: tuple[Mapping[str, Any], ...] = tuple(crds)
        self._schemas: dict[tuple[str, str], Schema] = {}
        self._validators: dict[tuple[str, str, bool], Any] = {}
        self._rules: dict[tuple[str, str, bool], bool] = {}  # whether a schema declares CEL rules
        for crd in self.crds:
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    self._schemas[key] = version["schema"]["openAPIV3Schema"]

    def kinds(self) -> list[tuple[str, str]]:
        return sorted(self._schemas)

    def schema_for(self, api_version: str, kind: str) -> Schema | None:
        return self._schemas.get((api_version, kind))

    def apply_defaults(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `obj` with schema defaults filled in and non-nullable nulls dropped, as the server stores it."""
        result = copy.deepcopy(dict(obj))
        schema = self.schema_for(str(obj.get("apiVersion")), str(obj.get("kind")))
        if schema is not None:
            _default(schema, result)
        return result

    def validate(self, obj: Mapping[str, Any], *, strict: bool = True) -> list[str]:
        """Errors (empty when valid) for `obj` after defaulting; `strict` rejects unknown fields like kubectl does."""
        api_version, kind = str(obj.get("apiVersion")), str(obj.get("kind"))
        schema = self.schema_for(api_version, kind)
        if schema is None:
            return [f"apiVersion/kind: no CRD here serves {api_version} {kind}"]
        key = (api_version, kind, strict)
        if key not in self._validators:
            self._validators[key] = _Validator(_translate(schema, strict), format_checker=_FORMATS)
        found: list[str] = []
        defaulted = self.apply_defaults(obj)
        for error in self._validators[key].iter_errors(defaulted):
            found.extend(m for m in _messages(error) if m not in found)
        if key not in self._rules:
            self._rules[key] = _has_rules(schema)
        if not found and self._rules[key]:
            from tinymlops.kube.cel import rule_errors

            found = rule_errors(schema, defaulted, field_path)
        return sorted(found)


def load_crds(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> CRDRegistry:
    """Read every CustomResourceDefinition in the given YAML files and directories (searched recursively)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.rglob("*.yaml")) if path.is_dir() else [path])
    crds: list[Mapping[str, Any]] = []
    for file in files:
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"{file}: cannot read CRDs: {exc}") from exc
        for doc in documents:
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                if doc.get("apiVersion") != "apiextensions.k8s.io/v1":
                    version = doc.get("apiVersion")
                    raise SpecError(f"{file}: {version} CRDs are not supported, use apiextensions.k8s.io/v1")
                crds.append(doc)
    return CRDRegistry(crds)


def _default(node: Mapping[str, Any], value: Any) -> None:
    """Structural defaulting: drop nulls the schema does not allow, fill absent defaults, then descend."""
    if isinstance(value, dict):
        props: Mapping[str, Any] = node.get("properties") or {}
        for name in [n for n, v in value.items() if v is None and n in props and not props[n].get("nullable")]:
            del value[name]
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        extra = node.get("additionalProperties")
        for name, item in value.items():
            sub = props.get(name, extra if isinstance(extra, dict) else None)
            if sub is not None:
                _default(sub, item)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _default(node["items"], item)


def _translate(node: Mapping[str, Any], strict: bool) -> Schema:
    """The Kubernetes dialect as draft 4 JSON Schema (x-kubernetes-* keys dropped once their meaning is carried)."""
    out: Schema = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _translate(sub, strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _translate(value, strict)
        # A junctor only adds checks to fields declared outside it, so it never forbids fields itself.
        elif key == "not":
            out[key] = _translate(value, False)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_translate(sub, False) for sub in value]
        elif not key.startswith("x-kubernetes-") and key not in ("nullable", "default", "description", "example"):
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if node.get("x-kubernetes-list-type") == "map" and node.get("x-kubernetes-list-map-keys"):
        out["x-list-map-keys"] = list(node["x-kubernetes-list-map-keys"])
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if strict and "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def _has_rules(node: Any) -> bool:
    if isinstance(node, Mapping):
        return "x-kubernetes-validations" in node or any(_has_rules(v) for v in node.values())
    return isinstance(node, list) and any(_has_rules(v) for v in node)


def field_path(path: Iterable[str | int]) -> str:
    """`spec.variants.precisions[0]`, `spec.selector.matchLabels[app.kubernetes.io/part-of]`."""
    text = ""
    for part in path:
        if isinstance(part, int) or not _PLAIN_KEY.match(part):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "<object>"


def _messages(error: ValidationError) -> list[str]:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        return [f"{field_path([*path, n])}: Required value" for n in error.validator_value if n not in error.instance]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties") or {}
        return [f"{field_path([*path, n])}: unknown field" for n in error.instance if n not in known]
    if error.validator in ("anyOf", "oneOf") and error.context:
        first: dict[Any, str] = {}
        for sub in error.context:
            first.setdefault(sub.relative_schema_path[0], "; ".join(_messages(sub)))
        forms = " | ".join(first[k] for k in sorted(first, key=str))
        return [f"{field_path(path)}: matches none of the allowed forms ({forms})"]
    return [f"{field_path(path)}: {error.message}"]


def structural_problems(schema: Mapping[str, Any]) -> list[str]:
    """Why the API server would refuse `schema` as non-structural (empty when structural)."""
    problems: list[str] = []
    _check_node(schema, [], problems)
    metadata = (schema.get("properties") or {}).get("metadata")
    if metadata is not None and set(metadata) - {"type", "properties"}:
        problems.append("metadata: only type and name/generateName restrictions are allowed")
    if metadata is not None and set(metadata.get("properties") or {}) - {"name", "generateName"}:
        problems.append("metadata: only name and generateName may be restricted")
    return problems


def _check_node(node: Mapping[str, Any], path: list[str | int], problems: list[str]) -> None:
    where = field_path(path)
    exempt = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if not node.get("type") and not exempt:
        problems.append(f"{where}: type is missing")
    problems.extend(f"{where}: {key} is not allowed in a structural schema" for key in _NOT_STRUCTURAL if key in node)
    extra = node.get("additionalProperties")
    if extra is False or (isinstance(extra, dict) and "properties" in node):
        problems.append(f"{where}: additionalProperties must be a schema and cannot be combined with properties")
    if node.get("type") == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{where}: an array needs exactly one items schema")
    if node.get("x-kubernetes-list-type") == "map":
        item = node.get("items") or {}
        for key in node.get("x-kubernetes-list-map-keys") or [None]:
            if key not in (item.get("required") or []) and "default" not in (item.get("properties") or {}).get(key, {}):
                problems.append(f"{where}: list map key {key} must be a required (or defaulted) item field")
    for name, sub in (node.get("properties") or {}).items():
        _check_node(sub, [*path, name], problems)
    if isinstance(extra, dict):
        _check_node(extra, [*path, "*"], problems)
    if isinstance(node.get("items"), dict):
        _check_node(node["items"], [*path, "*"], problems)
    for junctor, alternative in _alternatives(node):
        _check_junctor(alternative, node, [*path, junctor], problems)


def _check_junctor(
    alt: Mapping[str, Any], outer: Mapping[str, Any], path: list[str | int], problems: list[str]
) -> None:
    """Inside allOf/anyOf/oneOf/not only value checks are allowed, on fields also declared outside."""
    int_or_string = outer.get("x-kubernetes-int-or-string") and set(alt) == {"type"}
    problems.extend(
        f"{field_path(path)}: {key} is not allowed inside a junctor"
        for key in _NOT_IN_JUNCTORS
        if key in alt and not int_or_string
    )
    outer_props = outer.get("properties") or {}
    for name, sub in (alt.get("properties") or {}).items():
        if name not in outer_props:
            problems.append(f"{field_path([*path, name])}: not declared outside the junctor")
        else:
            _check_junctor(sub, outer_props[name], [*path, name], problems)
    if isinstance(alt.get("items"), dict):
        if not isinstance(outer.get("items"), dict):
            problems.append(f"{field_path(path)}: items not declared outside the junctor")
        else:
            _check_junctor(alt["items"], outer["items"], [*path, "*"], problems)
    for junctor, nested in _alternatives(alt):
        _check_junctor(nested, outer, [*path, junctor], problems)


def _alternatives(node: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for junctor in _JUNCTORS:
        value = node.get(junctor)
        for alternative in [value] if isinstance(value, dict) else value or []:
            yield junctor, alternative
