"""A demo progress that prints nothing, for the demo scenario tests (they assert on the report, not the lines)."""

from __future__ import annotations

from collections.abc import Mapping


class Quiet:
    def stage(self, name: str, detail: str = "") -> None:
        pass

    def fleet(self, converged: int, total: int, by_phase: Mapping[str, int]) -> None:
        pass
