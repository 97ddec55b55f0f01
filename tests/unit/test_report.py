"""The device report contract: one model, its wire form, its version, and the JSON Schema kept in step."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from importlib import resources
from typing import Any

import jsonschema
import pytest

from tinymlops.errors import InvalidReportError
from tinymlops.report import (
    MAX_LATENCIES,
    MAX_NAME_CHARS,
    MAX_REVISION,
    MAX_SEQ,
    PHASES,
    SCHEMA_VERSION,
    Report,
)


def schema() -> dict[str, Any]:
    """The schema as the installed package ships it (package data, like menu.schema.json)."""
    return json.loads(resources.files("tinymlops").joinpath("schemas/report.schema.json").read_text())


def wire(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "device": "dev-1", "namespace": "edge", "fleet": "cams", "device_class": "rpi4", "arch": "aarch64",
        "phase": "Running", "menu_version": 2, "sent_at": 1000.0,
    }
    raw.update(overrides)
    return raw


def test_the_schema_describes_the_model_and_its_limits() -> None:
    document = schema()
    jsonschema.Draft202012Validator.check_schema(document)
    properties = document["properties"]
    assert set(properties) == {f.name for f in fields(Report)}
    required = {f.name for f in fields(Report) if f.default is MISSING and f.default_factory is MISSING}
    assert set(document["required"]) == required
    assert properties["phase"]["enum"] == list(PHASES)
    assert properties["schema"]["maximum"] == SCHEMA_VERSION
    assert properties["latencies_ms"]["maxItems"] == properties["warmup_latencies_ms"]["maxItems"] == MAX_LATENCIES
    assert properties["revision"]["maximum"] == properties["target_revision"]["maximum"] == MAX_REVISION
    assert properties["seq"]["maximum"] == MAX_SEQ
    assert all(properties[name]["maxLength"] == MAX_NAME_CHARS
               for name in ("device", "namespace", "fleet", "device_class", "arch", "variant", "variant_sha256"))


def test_a_report_round_trips_through_its_wire_form_and_the_schema() -> None:
    report = Report(device="dev-1", namespace="edge", fleet="cams", device_class="rpi4", arch="aarch64",
                    phase="Running", menu_version=3, sent_at=12.5, variant="int8", variant_sha256="a" * 64,
                    reason="kept int8", inferences=4, errors=1, latencies_ms=(1.5, 2.0), warmup_latencies_ms=(9.0,),
                    load_ms=3.25, energy_mj=0.5, revision=2, target_revision=3, model_memory_bytes=1024,
                    buffer_dropped=7)
    sent = json.loads(json.dumps(report.to_json()))
    jsonschema.validate(sent, schema())
    assert sent["schema"] == SCHEMA_VERSION and sent["latencies_ms"] == [1.5, 2.0]
    assert Report.from_json(sent) == report


@pytest.mark.parametrize(("version", "read_as"), [(None, 1), (1, 1)])
def test_a_report_without_a_version_is_read_as_version_1(version: int | None, read_as: int) -> None:
    raw = wire() if version is None else wire(schema=version)
    assert Report.from_json(raw).schema == read_as


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1, True, "1", 1.0])
def test_a_version_this_reader_does_not_know_is_rejected_by_name(version: Any) -> None:
    with pytest.raises(InvalidReportError, match=rf"^reports\[0\]\.schema: {version!r} is not a report version"):
        Report.from_json(wire(schema=version), where="reports[0]")


@pytest.mark.parametrize(
    "overrides",
    [
        {"phase": "Offline"},  # the gateway's verdict, never a device's
        {"menu_version": -1},
        {"latencies_ms": [0.1] * (MAX_LATENCIES + 1)},
        {"fleet": "a/b"},
        {"device": ""},
        {"revision": MAX_REVISION + 1},
        {"inferences": True},
        {"schema": SCHEMA_VERSION + 1},
        {"seq": -1},
        {"seq": MAX_SEQ + 1},
        {"stale_seconds": -1.0},
        {"stale_seconds": "old"},
    ],
)
def test_the_schema_and_the_model_reject_the_same_reports(overrides: dict[str, Any]) -> None:
    jsonschema.validate(wire(), schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wire(**overrides), schema())
    with pytest.raises(InvalidReportError):
        Report.from_json(wire(**overrides))


def test_extraction_alarms_round_trip_and_are_checked() -> None:
    from tinymlops.report import Extraction, ExtractionAlarm

    report = Report.from_json(wire())
    assert "extraction" not in report.to_json()
    extraction = Extraction(3, (ExtractionAlarm("app-1", 100.0, 0.61),))
    sent = json.loads(json.dumps(Report.from_json({**wire(), "extraction": extraction.to_json()}).to_json()))
    jsonschema.validate(sent, schema())
    assert Report.from_json(sent).extraction == extraction
    for bad in ({"clients_watched": -1}, {"clients_watched": 1, "alarms": [{"client": "a", "since": 1, "w": 2}]},
                {"clients_watched": 1, "alarms": [{"client": "", "since": 1, "w": 0.5}]},
                {"clients_watched": 1, "alarms": [{"client": "a", "since": 1, "w": 0.5}] * 17}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wire(extraction=bad), schema())
        with pytest.raises(InvalidReportError, match=r"^report\.extraction"):
            Report.from_json(wire(extraction=bad))
