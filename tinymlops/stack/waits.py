"""Waiting on the embedded stack: poll a check until it holds, or fail naming what never happened.

Every demo scenario waits for the operator, the gateway or the fleet the same way, so they share this one
loop (and the one reader of a resource's condition) rather than each keeping its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tinymlops.errors import DemoError

POLL_S = 0.5
T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], deadline: float, *, interval: float = POLL_S,
               why: Callable[[], str] = lambda: "") -> T:
    """The first truthy value `check` returns; DemoError("timed out waiting for <what><why()>") after `deadline`
    (a `time.monotonic()` value).  `why` adds what was seen instead, computed only on a timeout."""
    while not (value := check()):
        if time.monotonic() > deadline:
            raise DemoError(f"timed out waiting for {what}{why()}")
        time.sleep(interval)
    return value


def condition(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any]:
    """A resource's status condition of `type_`, or {} when it has none (yet)."""
    for found in ((obj or {}).get("status") or {}).get("conditions") or ():
        if found.get("type") == type_:
            return dict(found)
    return {}
