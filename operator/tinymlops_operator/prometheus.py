"""Metric sources for rollout analysis: the small interface, and Prometheus behind it.

A rollout step asks one question per check ("error rate of the canary cohort
over the last minute?") and compares one number with a threshold, so a source
answers a PromQL query with one float.  A statistical check (the canary's
latency histogram against the stable one's) needs the series themselves:
`samples` answers with every series of an instant vector and its labels.
"No data yet" is `None` (or no series), which the caller treats as
inconclusive; a backend that cannot answer raises `MetricsUnavailableError`,
which pauses the rollout: it never promotes blindly.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Any, Protocol

import aiohttp

from tinymlops.errors import MetricsUnavailableError

# One series of an instant vector: its labels and its value.
Sample = tuple[dict[str, str], float]


class MetricSource(Protocol):
    """Anything that answers PromQL: an aggregating query with one number, any query with its series."""

    async def query(self, promql: str) -> float | None: ...

    async def samples(self, promql: str) -> list[Sample]: ...


class PrometheusSource:
    """Instant queries through Prometheus's HTTP API (`GET /api/v1/query`)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, session: aiohttp.ClientSession | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        # A session passed in belongs to the caller (shared connection pool); only ours is closed here.
        self._owns_session = session is None

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use: aiohttp wants a running event loop, which __init__ may not have.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def query(self, promql: str) -> float | None:
        """The query's single value; `None` when it has no data (empty result or NaN)."""
        body = await self._get(promql)
        if body.get("status") != "success":
            raise self._error(promql, f"failed ({body.get('errorType', 'error')}): {body.get('error', body)}")
        try:
            return self._value(promql, body["data"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise self._error(promql, f"got an answer that is not a query result ({exc!r})") from exc

    async def samples(self, promql: str) -> list[Sample]:
        """Every series of the query's instant vector with its labels; NaN values are left out (no data)."""
        body = await self._get(promql)
        if body.get("status") != "success":
            raise self._error(promql, f"failed ({body.get('errorType', 'error')}): {body.get('error', body)}")
        try:
            data = body["data"]
            if data["resultType"] != "vector":
                raise self._error(promql, f"returned a {data['resultType']}, not an instant vector")
            found = [(dict(sample.get("metric", {})), _number(sample["value"][1])) for sample in data["result"]]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise self._error(promql, f"got an answer that is not a query result ({exc!r})") from exc
        return [(labels, value) for labels, value in found if value is not None]

    def _value(self, promql: str, data: dict[str, Any]) -> float | None:
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            return _number(result[1])
        if kind != "vector":
            raise self._error(promql, f"returned a {kind}, not an instant vector or scalar")
        if not result:
            return None
        if len(result) > 1:
            # Summing here would hide a query that forgot to aggregate (one series per pod, per device class).
            labels = [sample.get("metric", {}) for sample in result[:3]]
            raise self._error(promql, f"returned {len(result)} series (e.g. {labels}); aggregate it to one")
        return _number(result[0]["value"][1])

    async def _get(self, promql: str) -> dict[str, Any]:
        try:
            async with self._http().get(f"{self.url}/api/v1/query", params={"query": promql},
                                        timeout=self.timeout) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                # Prometheus answers a bad query with 400 and a JSON error: that error is the useful part.
                if isinstance(body, dict) and body.get("status") == "error":
                    return body
                if response.status != 200 or not isinstance(body, dict):
                    raise self._error(promql, f"got HTTP {response.status}: {(await response.text())[:200]}")
                return body
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} is unreachable ({type(exc).__name__}: {str(exc) or 'timed out'}) "
                f"for query {promql!r}"
            ) from exc

    def _error(self, promql: str, what: str) -> MetricsUnavailableError:
        return MetricsUnavailableError(f"Prometheus at {self.url}: query {promql!r} {what}")


def _number(text: Any) -> float | None:
    value = float(text)
    return None if math.isnan(value) else value
