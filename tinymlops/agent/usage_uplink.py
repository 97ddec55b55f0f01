"""A licensed device's uplink: upload sealed checkpoints, fetch its licence token, install a refill.

All a device sends between audits is its new checkpoints (196 bytes per 1,000
inferences); the gateway answers with the counter it has accepted up to, which
the device keeps (`uplink.json`) so it never sends a checkpoint twice.  Offline,
nothing here runs and the device serves within its licence.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiohttp

from tinymlops.agent.licensed import install_license, open_meter
from tinymlops.agent.metering import CHECKPOINTS
from tinymlops.errors import GatewayError, MeterStateMissingError
from tinymlops.licensing.checkpoint import parse_many
from tinymlops.licensing.token import License
from tinymlops.store import atomic_write

UPLINK = "uplink.json"  # {"acked_end": <counter the gateway accepted up to>}
TIMEOUT = aiohttp.ClientTimeout(total=30)


def acked_end(state_dir: Path) -> int:
    try:
        return int(json.loads((state_dir / UPLINK).read_bytes())["acked_end"])
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        return 0


def pending_checkpoints(state_dir: Path, now: float) -> bytes:
    """Seal what is pending and return the checkpoints the gateway has not acknowledged, as uploaded."""
    try:
        meter = open_meter(state_dir, now, strict=False)
    except MeterStateMissingError:
        pass  # nothing can be sealed, but what was sealed is still evidence: send it
    else:
        if meter is None:
            return b""  # never licensed
        meter.seal(now)
        meter.close(now)
    path = state_dir / CHECKPOINTS
    records = parse_many(path.read_bytes() if path.is_file() else b"", where=str(path))
    since = acked_end(state_dir)
    return b"".join(c.to_bytes() for c in records if c.end > since)


async def upload(session: aiohttp.ClientSession, gateway_url: str, state_dir: Path, *, namespace: str, fleet: str,
                 device: str, now: float) -> dict[str, Any]:
    """Send the unacknowledged checkpoints; the gateway's reconciliation (usage, anomalies) as it answered."""
    body = {"checkpoints": base64.b64encode(pending_checkpoints(state_dir, now)).decode("ascii")}
    url = f"{gateway_url}/v1/usage/{namespace}/{fleet}/{device}"
    try:
        async with session.post(url, json=body, timeout=TIMEOUT) as response:
            answer: dict[str, Any] = await response.json()
            if response.status != 200:
                raise GatewayError(f"POST {url}: {response.status} {answer.get('error', '')}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GatewayError(f"POST {url}: {exc}") from exc
    atomic_write(state_dir / UPLINK, json.dumps({"acked_end": int(answer.get("last_end", 0))}).encode())
    return answer


async def refresh_license(session: aiohttp.ClientSession, gateway_url: str, state_dir: Path, *, namespace: str,
                          fleet: str, device: str, now: float) -> License | None:
    """Fetch the device's current token and install it when it is new (verified as `agent install --license`
    verifies); None when the gateway has none for it yet or it is the one installed."""
    url = f"{gateway_url}/v1/licenses/{namespace}/{fleet}/{device}"
    try:
        async with session.get(url, timeout=TIMEOUT) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise GatewayError(f"GET {url}: {response.status} {(await response.text())[:200]}")
            token = (await response.text()).strip()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GatewayError(f"GET {url}: {exc}") from exc
    try:
        meter = open_meter(state_dir, now, strict=False)
    except MeterStateMissingError:  # installing the gateway's token rebuilds the lost meter
        meter = None
    current = None if meter is None else meter.tokens[-1] if meter.tokens else None
    if meter is not None:
        meter.close(now)
    if current == token:
        return None
    return install_license(state_dir, token, now)
