"""tinymlops.kube.schema: the Kubernetes schema dialect, defaulting and messages, on small hand-made CRDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tinymlops.errors import SpecError
from tinymlops.kube.schema import CRDRegistry, field_path, load_crds, structural_problems


def registry(spec_schema: dict[str, Any]) -> CRDRegistry:
    schema = {"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
        "spec": spec_schema}}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "spec": {"group": "example.io", "names": {"kind": "Thing", "plural": "things"}, "scope": "Namespaced",
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": schema}}]}}
    return CRDRegistry([crd])


def thing(spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.io/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": spec}


def test_unknown_kinds_are_reported_not_guessed() -> None:
    reg = registry({"type": "object"})
    assert reg.validate({"apiVersion": "example.io/v2", "kind": "Thing"}) == [
        "apiVersion/kind: no CRD here serves example.io/v2 Thing"
    ]
    assert reg.schema_for("example.io/v1", "Thing") is not None
    assert reg.kinds() == [("example.io/v1", "Thing")]


def test_nullable_allows_null_and_non_nullable_null_is_pruned_then_defaulted() -> None:
    reg = registry({"type": "object", "properties": {
        "a": {"type": "number", "nullable": True},
        "b": {"type": "string", "enum": ["x", "y"], "nullable": True},
        "c": {"type": "integer", "default": 3},
        "d": {"type": "integer"}}})
    assert reg.validate(thing({"a": None, "b": None, "c": None, "d": None})) == []
    assert reg.apply_defaults(thing({"a": None, "c": None, "d": None}))["spec"] == {"a": None, "c": 3}


def test_int_or_string() -> None:
    reg = registry({"type": "object", "properties": {"port": {"x-kubernetes-int-or-string": True,
                                                               "anyOf": [{"type": "integer"}, {"type": "string"}]}}})
    assert reg.validate(thing({"port": 80})) == []
    assert reg.validate(thing({"port": "http"})) == []
    assert reg.validate(thing({"port": 1.5})) != []


def test_formats_the_api_server_checks() -> None:
    reg = registry({"type": "object", "properties": {
        "when": {"type": "string", "format": "date-time"},
        "day": {"type": "string", "format": "date"},
        "blob": {"type": "string", "format": "byte"},
        "small": {"type": "integer", "format": "int32"},
        "other": {"type": "string", "format": "made-up"}}})
    good = {"when": "2024-02-29T12:00:00.5+01:00", "day": "2024-02-29", "blob": "aGVsbG8=", "small": 2**31 - 1,
            "other": "anything"}
    assert reg.validate(thing(good)) == []
    bad = {"when": "2024-02-30T12:00:00Z", "day": "29/02/2024", "blob": "not base64!", "small": 2**31}
    errors = reg.validate(thing(bad))
    assert [e.split(":")[0] for e in errors] == ["spec.blob", "spec.day", "spec.small", "spec.when"]
    assert reg.validate(thing({"when": "2024-02-01 12:00:00"})) == [
        "spec.when: '2024-02-01 12:00:00' is not a 'date-time'"
    ]


def test_list_types_set_and_map_reject_duplicates() -> None:
    reg = registry({"type": "object", "properties": {
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name", "proto"],
                  "items": {"type": "object", "required": ["name", "proto"],
                            "properties": {"name": {"type": "string"}, "proto": {"type": "string"}}}}}})
    ports = [{"name": "a", "proto": "TCP"}, {"name": "a", "proto": "UDP"}]
    assert reg.validate(thing({"tags": ["x", "y"], "ports": ports})) == []
    errors = reg.validate(thing({"tags": ["x", "x"], "ports": [*ports, {"name": "a", "proto": "UDP"}]}))
    assert errors == [
        "spec.ports[2]: Duplicate value: another item has name='a', proto='UDP'",
        "spec.tags: ['x', 'x'] has non-unique elements",
    ]


def test_strict_rejects_unknown_fields_except_where_preserved() -> None:
    reg = registry({"type": "object", "properties": {
        "known": {"type": "string"},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"a": {"type": "string"}}},
        "map": {"type": "object", "additionalProperties": {"type": "integer"}}}})
    obj = thing({"known": "k", "extra": 1, "open": {"a": "x", "b": 2}, "map": {"any": 1}})
    assert reg.validate(obj) == ["spec.extra: unknown field"]
    assert reg.validate(obj, strict=False) == []
    assert reg.validate(thing({"map": {"any": "one"}}), strict=False) == [
        "spec.map.any: 'one' is not of type 'integer'"
    ]


def test_nested_defaults_apply_below_a_defaulted_parent() -> None:
    reg = registry({"type": "object", "properties": {
        "outer": {"type": "object", "default": {}, "properties": {
            "inner": {"type": "string", "default": "x"}}},
        "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer", "default": 1}}}},
    }})
    spec = reg.apply_defaults(thing({"items": [{}, {"n": 5}]}))["spec"]
    assert spec == {"outer": {"inner": "x"}, "items": [{"n": 1}, {"n": 5}]}


def test_field_paths_read_like_kubernetes() -> None:
    assert field_path(["spec", "variants", "precisions", 0]) == "spec.variants.precisions[0]"
    assert field_path(["spec", "selector", "matchLabels", "app.kubernetes.io/part-of"]) == (
        "spec.selector.matchLabels[app.kubernetes.io/part-of]"
    )
    assert field_path([]) == "<object>"


def test_structural_problems_are_found() -> None:
    schema = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "untyped": {"description": "no type"},
            "set": {"type": "array", "uniqueItems": True, "items": {"type": "string"}},
            "both": {"type": "object", "properties": {"a": {"type": "string"}},
                     "additionalProperties": {"type": "string"}},
            "closed": {"type": "object", "additionalProperties": False},
            "tuple": {"type": "array", "items": [{"type": "string"}]},
            "junctor": {"type": "object", "properties": {"a": {"type": "string"}},
                        "anyOf": [{"type": "object", "properties": {"b": {"enum": ["x"]}}}]},
            "listmap": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"],
                        "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        },
    }
    problems = structural_problems(schema)
    expected = ["untyped: type is missing", "set: uniqueItems", "both: additionalProperties",
                "closed: additionalProperties", "tuple: an array needs", "junctor.anyOf: type is not allowed",
                "junctor.anyOf.b: not declared",
                "listmap: list map key k", "metadata: only name and generateName"]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert len(problems) == len(expected)
    assert structural_problems({"x-kubernetes-preserve-unknown-fields": True}) == []


def test_load_crds_reads_files_and_directories_and_names_bad_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml"):
        load_crds(tmp_path)
    (tmp_path / "sub" / "broken.yaml").write_text(
        "apiVersion: apiextensions.k8s.io/v1beta1\nkind: CustomResourceDefinition\n")
    with pytest.raises(SpecError, match="v1beta1 CRDs are not supported"):
        load_crds([tmp_path / "sub" / "broken.yaml"])
    (tmp_path / "sub" / "broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n---\n")
    assert load_crds(str(tmp_path)).crds == ()
