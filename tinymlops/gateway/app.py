"""The gateway's HTTP service: serve the artifact store, take device reports, export metrics.

Every answer is JSON (errors are `{"error": "<message naming the field or key>"}`),
and no input from a device can crash the service: a bad request gets a 4xx and
the next request is served as usual.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from aiohttp import web

from tinymlops.errors import BatchTooLargeError, InvalidReportError, ReceiptsError
from tinymlops.gateway.authn import ReportGuard
from tinymlops.gateway.driftstate import DriftBook, PlanReferences
from tinymlops.gateway.fleetstate import Applied, FleetState
from tinymlops.gateway.metrics import GatewayMetrics
from tinymlops.gateway.registry import StoreRegistry
from tinymlops.gateway.rejections import RejectionLog
from tinymlops.gateway.reports import MAX_REPORTS_PER_REQUEST, Rejection, parse_batch
from tinymlops.gateway.tails import TailService
from tinymlops.gateway.usage import UsageBook, decode_upload
from tinymlops.gateway.usageledger import UsageLedger
from tinymlops.layout import (
    BLOBS_DIR,
    MENU_FILE,
    MENU_SIGNATURE_FILE,
    PLAN_FILE,
    PLAN_SIGNATURE_FILE,
    SERVED_ROOTS,
    is_blob_key,
    license_key,
)
from tinymlops.report import Report
from tinymlops.store import ArtifactStore, normal_key, sha256_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BODY_BYTES = 4 * 1024 * 1024
HOT_FILES = frozenset({PLAN_FILE, PLAN_SIGNATURE_FILE, MENU_FILE, MENU_SIGNATURE_FILE})
SHA256_NAME = re.compile(r"[0-9a-f]{64}")
MENU_VERSION = re.compile(r"[0-9]{1,18}")
OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # RFC 1123 subdomain: no "..", no "/"
BIG_BODY_BYTES = 256 * 1024
BIG_LATENCY_COUNT = 20_000
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # caches may keep plans and menus but must ask (cheaply, by ETag) each time


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def store_kind(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    if name in (PLAN_FILE, PLAN_SIGNATURE_FILE):
        return "plan"
    if name in (MENU_FILE, MENU_SIGNATURE_FILE):
        return "menu"
    return "blob" if is_blob_key(key) else "other"


def content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    return "text/plain" if name.endswith(".sig") else "application/octet-stream"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 §13.1.2): W/ prefixes do not matter."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        candidate = candidate.removeprefix("W/").strip('"')
        if candidate == etag:
            return True
    return False


class HotFiles:
    """Bytes and sha256 of the small files every device polls, so a poll costs a stat, not a hash.

    Keyed by the store's `stamp`, which changes with every new version of a key (on disk a new
    inode: the store replaces files by rename), even one of the same size within the same tick.
    """

    def __init__(self, store: ArtifactStore, max_entries: int = 4096) -> None:
        self.store = store
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Hashable, bytes, str]] = {}

    def read(self, key: str) -> tuple[bytes, str]:
        cached = self._entries.get(key)
        if cached is not None and cached[0] == self.store.stamp(key):
            return cached[1], cached[2]
        data, stamp = self.store.get_stamped(key)
        digest = sha256_bytes(data)
        if len(self._entries) >= self.max_entries and key not in self._entries:
            self._entries.pop(next(iter(self._entries)))  # oldest first: fleets come and go
        self._entries[key] = (stamp, data, digest)
        return data, digest


STORE = web.AppKey("store", ArtifactStore)
STATE = web.AppKey("state", FleetState)
DRIFT = web.AppKey("drift", DriftBook)
METRICS = web.AppKey("metrics", GatewayMetrics)
FILES = web.AppKey("files", HotFiles)
GUARD = web.AppKey("guard", ReportGuard)  # present only when the gateway authenticates reports
GUARD_LOCK = web.AppKey("guard_lock", asyncio.Lock)
REGISTRY = web.AppKey("registry", StoreRegistry)  # present only when the registry comes from the store
REJECTIONS = web.AppKey("rejections", RejectionLog)
USAGE = web.AppKey("usage", UsageBook)
USAGE_LOCK = web.AppKey("usage_lock", asyncio.Lock)  # one upload at a time: each places after the last saved
TAILS = web.AppKey("tails", TailService)  # split variants' tails, for registered devices (`tails.py`)


def _read_and_hash(store: ArtifactStore, key: str) -> tuple[bytes, str]:
    data = store.get(key)
    return data, sha256_bytes(data)


async def _serve_store(request: web.Request, key: str) -> web.Response:
    store = request.app[STORE]
    if "\x00" in key:  # a file system would raise a message that does not name the key
        return json_error(400, f"store key {key!r}: contains a NUL byte")
    try:
        normal = normal_key(key)
    except ValueError as exc:
        return json_error(400, str(exc))
    parts = normal.split("/")
    not_found = json_error(404, f"store key not found: {key!r}")
    # Dot files are atomic_write's half-written temporaries: never serve them.
    if parts[0] not in SERVED_ROOTS or any(part.startswith(".") for part in parts):
        return not_found
    try:
        if len(parts) >= 2 and parts[-2] == BLOBS_DIR and SHA256_NAME.fullmatch(parts[-1]):
            # Content-addressed: the name is the digest, so a revalidation needs no read at all.
            etag, cache_control = parts[-1], IMMUTABLE
            if not store.exists(normal):
                return not_found
            if etag_matches(request.headers.get("If-None-Match"), etag):
                return web.Response(status=304, headers={"ETag": f'"{etag}"', "Cache-Control": cache_control})
            data = await asyncio.to_thread(store.get, normal)
        else:
            cache_control = REVALIDATE
            if parts[-1] in HOT_FILES:
                data, etag = request.app[FILES].read(normal)  # a stat when cached: fine on the event loop
            else:
                data, etag = await asyncio.to_thread(_read_and_hash, store, normal)
    except ValueError as exc:  # resolves outside the store (a link, say)
        return json_error(400, str(exc))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return not_found
    except OSError as exc:
        log.warning("store key %r cannot be read: %s", key, exc)
        return json_error(500, f"store key {key!r}: cannot be read")
    headers = {"ETag": f'"{etag}"', "Cache-Control": cache_control}
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, headers=headers, content_type=content_type(parts[-1]))


async def get_store(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    status = 500
    try:
        response = await _serve_store(request, key)
        status = response.status
        return response
    finally:
        request.app[METRICS].count_store_request(store_kind(key), status)


def _decode_batch(raw: bytes, guard: ReportGuard | None) -> tuple[list[Report], list[Rejection]]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[...]]]] nested past the stack
        raise InvalidReportError(f"body: not valid JSON ({str(exc)[:200]})") from exc
    return parse_batch(body, max_reports=MAX_REPORTS_PER_REQUEST, guard=guard)


def _observe(metrics: GatewayMetrics, applied: list[tuple[Report, Applied]]) -> None:
    for report, outcome in applied:
        metrics.observe_report(report, outcome)


async def _off_loop_if_big(big: bool, fn: Callable[..., T], *args: Any) -> T:
    # A full batch (4 MiB, 256k latencies) costs ~0.5 s of CPU: run it in a thread so
    # plan polls keep flowing meanwhile; the small batches of a live fleet stay inline.
    return await asyncio.to_thread(fn, *args) if big else fn(*args)


async def post_reports(request: web.Request) -> web.Response:
    too_large = f"body: larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB"
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return json_error(413, too_large)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length to check first
        return json_error(413, too_large)
    guard, big = request.app.get(GUARD), len(raw) > BIG_BODY_BYTES
    try:
        if guard is None:
            accepted, rejected = await _off_loop_if_big(big, _decode_batch, raw, None)
        else:
            # Sequence numbers and rate buckets see one batch at a time, even while a big one is in a thread.
            async with request.app[GUARD_LOCK]:
                registry = request.app.get(REGISTRY)
                if registry is not None:  # a stat; a read and parse only when the operator wrote a new one
                    await asyncio.to_thread(registry.refresh, guard)
                accepted, rejected = await _off_loop_if_big(big, _decode_batch, raw, guard)
    except BatchTooLargeError as exc:
        return json_error(413, str(exc))
    except InvalidReportError as exc:
        return json_error(400, str(exc))
    state, metrics = request.app[STATE], request.app[METRICS]
    # FleetState is only ever touched on the event loop; prometheus-client metrics are thread-safe.
    applied = [(report, state.apply(report)) for report in accepted]
    # Only fresh reports' histograms: a retried report's were merged (or refused) the first time.
    drift = request.app[DRIFT]
    refused = [drift.apply(report) for report, outcome in applied if outcome.fresh]
    metrics.count_drift_rejections(reason for reason in refused if reason is not None)
    latencies = sum(len(report.latencies_ms) for report in accepted)
    await _off_loop_if_big(latencies > BIG_LATENCY_COUNT, _observe, metrics, applied)
    metrics.count_reports(accepted=len(accepted), rejected=len(rejected))
    metrics.count_rejections(r.reason for r in rejected)
    _attribute(request.app, rejected)
    return web.json_response(
        {"accepted": len(accepted),
         "rejected": [{"index": r.index, "reason": r.reason, "error": r.error} for r in rejected]}
    )


def _attribute(app: web.Application, rejected: list[Rejection]) -> None:
    """Note refusals against the fleet and device they name, where that keeps memory bounded
    (`rejections.py`): a registered device, or a fleet known from accepted reports."""
    guard, log_, state = app.get(GUARD), app[REJECTIONS], app[STATE]
    for rejection in rejected:
        if rejection.device is None or rejection.fleet is None:
            continue
        registered = guard is not None and rejection.device in guard.registry
        known = next(state.devices(rejection.device[0], rejection.fleet), None) is not None
        log_.record(rejection, attributable=registered or known)


async def get_summary(request: web.Request) -> web.Response:
    raw = request.query.get("menu_version")
    menu_version: int | None = None
    if raw is not None:
        if not MENU_VERSION.fullmatch(raw):  # not str.isdigit: it takes "²", which int() refuses
            return json_error(400, f"menu_version: {raw!r} is not an integer >= 0")
        menu_version = int(raw)
    namespace, fleet = request.match_info["namespace"], request.match_info["fleet"]
    summary = request.app[STATE].summary(namespace, fleet, menu_version).as_json()
    summary["drift"] = request.app[DRIFT].summary(namespace, fleet)
    summary["rejected"] = request.app[REJECTIONS].for_fleet(namespace, fleet)
    return web.json_response(summary)


async def _registered_key(request: web.Request) -> Any:
    """The identity key the registry holds for the device the path names, or the error response."""
    guard = request.app.get(GUARD)
    if guard is None:
        return json_error(403, "licence usage needs the device registry (this gateway runs without one)")
    registry = request.app.get(REGISTRY)
    if registry is not None:
        async with request.app[GUARD_LOCK]:
            await asyncio.to_thread(registry.refresh, guard)
    namespace, device = request.match_info["namespace"], request.match_info["device"]
    if not OBJECT_NAME.fullmatch(request.match_info["fleet"]):
        return json_error(400, f"fleet {request.match_info['fleet'][:64]!r}: not a Kubernetes object name")
    key = guard.registry.get((namespace, device))
    if key is None:
        return json_error(403, f"device {namespace}/{device}: not registered")
    return key


async def post_usage(request: web.Request) -> web.Response:
    """A device's sealed checkpoints, reconciled against the last accepted (`gateway/usage.py`)."""
    key = await _registered_key(request)
    if isinstance(key, web.Response):
        return key
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return json_error(413, f"body: larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB")
    try:
        checkpoints = decode_upload(json.loads(await request.read()))
    except ReceiptsError as exc:
        return json_error(400, str(exc))
    except (ValueError, RecursionError) as exc:
        return json_error(400, f"body: not valid JSON ({str(exc)[:200]})")
    namespace, fleet, device = (request.match_info[k] for k in ("namespace", "fleet", "device"))
    async with request.app[USAGE_LOCK]:  # the ledger is saved in the store: off the event loop
        result = await asyncio.to_thread(request.app[USAGE].apply, namespace, fleet, device, key, checkpoints)
    return web.json_response({"usage": result.usage, "accepted": len(result.accepted),
                              "anomalies": [a.to_json() for a in result.anomalies],
                              "last_end": result.last.end if result.last else 0})


async def get_license(request: web.Request) -> web.Response:
    """The device's current licence token, as the issuer left it in the store (404: none issued)."""
    key = await _registered_key(request)
    if isinstance(key, web.Response):
        return key
    namespace, fleet, device = (request.match_info[k] for k in ("namespace", "fleet", "device"))
    try:
        token = await asyncio.to_thread(request.app[STORE].get, license_key(namespace, fleet, device))
    except (FileNotFoundError, KeyError):
        return json_error(404, f"no licence issued for {namespace}/{fleet}/{device}")
    return web.Response(body=token, content_type="text/plain", headers={"Cache-Control": REVALIDATE})


async def get_usage(request: web.Request) -> web.Response:
    namespace, fleet = request.match_info["namespace"], request.match_info["fleet"]
    for name in (namespace, fleet):
        if not OBJECT_NAME.fullmatch(name):
            return json_error(400, f"{name[:64]!r}: not a Kubernetes object name")
    async with request.app[USAGE_LOCK]:  # the first ask reads the fleet's ledgers back from the store
        summary = await asyncio.to_thread(request.app[USAGE].fleet, namespace, fleet)
    return web.json_response(summary)


async def get_metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def get_healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Unknown routes and wrong methods answer in JSON too; a bug answers 500 and the service lives on."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, f"{request.method} {request.path}: {exc.reason}")
    except Exception:
        log.exception("gateway: %s %s failed", request.method, request.path)
        return json_error(500, f"{request.method} {request.path}: internal error")


def create_app(
    store: ArtifactStore,
    *,
    offline_after_s: float = 30.0,
    clock: Callable[[], float] = time.time,
    guard: ReportGuard | None = None,
    registry_from_store: bool = False,
) -> web.Application:
    """The gateway's routes.  `guard`: take only signed reports from the devices its registry names
    (`authn.py`); None takes any well-formed report, signed or not, as before devices had identities.
    `registry_from_store`: the guard's registry is the one the operator publishes in the store, reloaded
    when it changes (`registry.py`; a guard with an empty registry is made when none is given)."""
    # client_max_size also bounds chunked bodies, which carry no Content-Length to check up front.
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    if registry_from_store:
        guard = guard if guard is not None else ReportGuard({})
        app[REGISTRY] = StoreRegistry(store)
    if guard is not None:
        app[GUARD], app[GUARD_LOCK] = guard, asyncio.Lock()
    state = FleetState(offline_after_s=offline_after_s, clock=clock)
    drift = DriftBook(PlanReferences(store).baseline, clock=clock)
    app[REJECTIONS] = RejectionLog(clock=clock)
    app[STORE] = store
    app[STATE] = state
    app[DRIFT] = drift
    app[METRICS] = GatewayMetrics(state, drift=drift)
    app[FILES] = HotFiles(store)
    app[USAGE] = UsageBook(app[METRICS].registry, UsageLedger(store))
    app[USAGE_LOCK] = asyncio.Lock()
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/v1/store/{key:.+}", get_store)
    app.router.add_post("/v1/reports", post_reports)
    app.router.add_get("/v1/fleets/{namespace}/{fleet}/summary", get_summary)
    app.router.add_get("/v1/fleets/{namespace}/{fleet}/usage", get_usage)
    app.router.add_post("/v1/usage/{namespace}/{fleet}/{device}", post_usage)
    app.router.add_get("/v1/licenses/{namespace}/{fleet}/{device}", get_license)
    app[TAILS] = TailService(store, lambda: app[GUARD].registry if GUARD in app else None, app[METRICS].registry,
                             clock=clock)
    app.router.add_post("/v1/tails/{namespace}/{model}/{sha256}", app[TAILS].handle)
    return app


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate chain and its key (a `kubernetes.io/tls` Secret's
    tls.crt and tls.key, as cert-manager writes them); ssl.SSLError or OSError name what is wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class Gateway:
    """The app served on a socket, started and stopped from a running event loop (the embedded stack)."""

    def __init__(
        self,
        store: ArtifactStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        offline_after_s: float = 30.0,
        guard: ReportGuard | None = None,
        registry_from_store: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = create_app(store, offline_after_s=offline_after_s, guard=guard,
                              registry_from_store=registry_from_store)
        self.state: FleetState = self.app[STATE]
        self.host, self.port = host, port
        self.ssl_context = ssl_context  # None: plain HTTP
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # No access log: thousands of devices polling a plan would drown every other line.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])  # the real port when 0 asked the kernel for a free one
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
