"""The report batch agents POST to the gateway: `{"reports": [...]}` (pure).

Each report is validated on its own (`tinymlops.report.Report.from_json`, which
names the bad field): a bad report is rejected alone and the rest of its batch is
still taken, because one broken device must not blind the gateway to its
neighbours.  Only a malformed envelope fails the whole request.

An item is a plain report or a signed one (`SignedReport`'s envelope).  Without a
`ReportGuard` (no device registry configured) both are taken and no signature is
checked; with one, only signed reports its registry vouches for (`authn.py`).
Every rejection carries its reason (`authn.REASONS`), by which the gateway counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import BatchTooLargeError, InvalidReportError
from tinymlops.gateway.authn import MALFORMED, Refusal, ReportGuard
from tinymlops.report import Report, SignedReport

MAX_REPORTS_PER_REQUEST = 1000


@dataclass(frozen=True)
class Rejection:
    index: int
    error: str
    reason: str = MALFORMED
    device: tuple[str, str] | None = None  # (namespace, name) the report claims, when it could be read
    fleet: str | None = None


def parse_batch(
    body: Any, *, max_reports: int = MAX_REPORTS_PER_REQUEST, guard: ReportGuard | None = None
) -> tuple[list[Report], list[Rejection]]:
    """Split `{"reports": [...]}` into valid (and, with a `guard`, authentic) reports and per-index rejections.

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
        where = f"reports[{index}]"
        verdict = guard.admit(item, where=where) if guard is not None else _unchecked(item, where)
        if isinstance(verdict, Refusal):
            rejected.append(Rejection(index=index, error=verdict.error, reason=verdict.reason,
                                      device=verdict.device, fleet=verdict.fleet))
        else:
            accepted.append(verdict)
    return accepted, rejected


def _unchecked(item: Any, where: str) -> Report | Refusal:
    """A plain or signed report, validated but not authenticated (the gateway has no registry)."""
    try:
        if SignedReport.is_envelope(item):
            return SignedReport.from_json(item, where=where).open(where=where)
        return Report.from_json(item, where=where)
    except InvalidReportError as exc:
        return Refusal(MALFORMED, str(exc))
