"""How a component's domain error reaches whoever launched the pipeline.

A task that fails only exits non-zero; kfp.local then raises a RuntimeError
naming the task, and a KFP backend marks the run failed.  So each component
prints one marker line with the error's class and message before failing,
and the runner turns the marker back into the same TinyMLOps error.  It finds
the class by name in `tinymlops.errors`, the one module that defines them all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

MARKER = "TINYMLOPS_ERROR "


@contextmanager
def reported_errors() -> Iterator[None]:
    """Print a marker line for a TinyMLOps error escaping the block, then let it fail the task."""
    from tinymlops.errors import TinyMLOpsError

    try:
        yield
    except TinyMLOpsError as exc:
        print(MARKER + json.dumps({"type": type(exc).__name__, "message": str(exc)}), flush=True)
        raise


def parse_reported_error(output: str) -> tuple[str, str] | None:
    """The (error class name, message) of the last marker in `output`, if any."""
    for line in reversed(output.splitlines()):
        start = line.find(MARKER)
        if start < 0:
            continue
        try:
            payload = json.loads(line[start + len(MARKER):])
            return str(payload["type"]), str(payload["message"])
        except (ValueError, KeyError, TypeError):
            continue
    return None
