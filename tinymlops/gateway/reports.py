"""The report batch agents POST to the gateway: `{"reports": [...]}` (pure).

Each report is validated on its own (`tinymlops.report.Report.from_json`, which
names the bad field): a bad report is rejected alone and the rest of its batch is
still taken, because one broken device must not blind the gateway to its
neighbours.  Only a malformed envelope fails the whole request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import BatchTooLargeError, InvalidReportError
from tinymlops.report import Report

MAX_REPORTS_PER_REQUEST = 1000


@dataclass(frozen=True)
class Rejection:
    index: int
    error: str


def parse_batch(body: Any, *, max_reports: int = MAX_REPORTS_PER_REQUEST) -> tuple[list[Report], list[Rejection]]:
    """Split `{"reports": [...]}` into valid reports and per-index rejections.

    Only a malformed envelope raises (InvalidReportError, or BatchTooLargeError
    past `max_reports`); a bad report inside it becomes a Rejection.
    """
    if not isinstance(body, Mapping):
        raise InvalidReportError("body: is not a JSON object with a 'reports' list")
    items = body.get("reports")
    if not isinstance(items, list):
        raise InvalidReportError("reports: is required and must be a list")
    if len(items) > max_reports:
        raise BatchTooLargeError(f"reports: {len(items)} reports, at most {max_reports} per request")
    accepted: list[Report] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            accepted.append(Report.from_json(item, where=f"reports[{index}]"))
        except InvalidReportError as exc:
            rejected.append(Rejection(index=index, error=str(exc)))
    return accepted, rejected
