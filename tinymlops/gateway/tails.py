"""The tail service: run the second half of a split variant on the tensor a registered device sends.

`POST /v1/tails/<namespace>/<model>/<tail sha256>` (the request format is `tinymlops/tailrequest.py`).  The
tail is a blob the factory published under that model's folder (a split point's `tail` in the signed menu);
the gateway reads it from its store, checks its digest, and keeps a few sessions loaded (by digest).

A request is refused, its reason counted in `tinymlops_gateway_tail_requests{result}` (bounded labels: the
RESULTS below, never a device), when:

- the gateway has no device registry (`no-registry`, 403): tails are for identified devices only;
- the device is not registered, or its signature does not hold over the path, time and body, or the time is
  more than MAX_SKEW_S away (`unknown-device`, `bad-signature`, `stale`; 401);
- the device sends faster than the limiter allows (`rate-limited`, 429);
- the body is larger than MAX_TAIL_BYTES (`too-large`, 413) or not a whole number of the tail's input
  samples, at most MAX_TAIL_SAMPLES (`bad-shape`, 400, naming the expected size);
- no such tail is in the store under that model (`unknown-tail`, 404).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter, Histogram

from tinymlops.errors import IntegrityError, SignatureError
from tinymlops.gateway.ratelimit import RateLimiter
from tinymlops.layout import blob_key, model_prefix
from tinymlops.runners import Runner
from tinymlops.signing import verify
from tinymlops.store import ArtifactStore, check_digest
from tinymlops.tailrequest import DEVICE_HEADER, MAX_SKEW_S, SIGNATURE_HEADER, TIME_HEADER, signed_bytes

MAX_TAIL_BYTES = 1 << 20
MAX_TAIL_SAMPLES = 64
MAX_SESSIONS = 16
SHA256 = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # a Kubernetes object name: never a path
OK, NO_REGISTRY, UNKNOWN_DEVICE, BAD_SIGNATURE, STALE, RATE_LIMITED, TOO_LARGE, BAD_SHAPE, UNKNOWN_TAIL = RESULTS = (
    "ok", "no-registry", "unknown-device", "bad-signature", "stale", "rate-limited", "too-large", "bad-shape",
    "unknown-tail")
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class TailService:
    def __init__(self, store: ArtifactStore, registry: Callable[[], Mapping[tuple[str, str], Ed25519PublicKey] | None],
                 metrics: CollectorRegistry, *, clock: Callable[[], float] = time.time,
                 limiter: RateLimiter | None = None) -> None:
        self.store = store
        self.registry = registry  # the report guard's registry, as it is now (None: the gateway has none)
        self.clock = clock
        self.limiter = limiter if limiter is not None else RateLimiter(rate=50.0, burst=100.0)
        self._sessions: OrderedDict[str, Runner] = OrderedDict()
        self.requests = Counter("tinymlops_gateway_tail_requests", "Tail requests of split variants, by result.",
                                ("result",), registry=metrics)
        self.seconds = Histogram("tinymlops_gateway_tail_seconds", "Time to run a split variant's tail.",
                                 buckets=SECONDS_BUCKETS, registry=metrics)
        for result in RESULTS:
            self.requests.labels(result=result)

    async def handle(self, request: web.Request) -> web.Response:
        status, body = await self._answer(request)
        return web.json_response(body, status=status)

    async def _answer(self, request: web.Request) -> tuple[int, dict[str, object]]:
        namespace, model, digest = (request.match_info[k] for k in ("namespace", "model", "sha256"))
        if request.content_length is not None and request.content_length > MAX_TAIL_BYTES:
            return self._refuse(TOO_LARGE, 413, f"body of {request.content_length} bytes, at most {MAX_TAIL_BYTES}")
        body = await request.read()
        if len(body) > MAX_TAIL_BYTES:
            return self._refuse(TOO_LARGE, 413, f"body of {len(body)} bytes, at most {MAX_TAIL_BYTES}")
        refused = self._authenticate(request, body)
        if refused is not None:
            return refused
        runner = self._runner(namespace, model, digest)
        if runner is None:
            return self._refuse(UNKNOWN_TAIL, 404, f"no tail {digest[:12]}… published for {namespace}/{model}")
        shape = tuple(int(d) if isinstance(d, int) else 1 for d in runner.session.get_inputs()[0].shape[1:])
        per_sample = 4 * math.prod(shape)
        samples, rest = divmod(len(body), per_sample)
        if rest or not 1 <= samples <= MAX_TAIL_SAMPLES:
            return self._refuse(BAD_SHAPE, 400, f"body of {len(body)} bytes is not 1..{MAX_TAIL_SAMPLES} samples of "
                                                f"float32 {list(shape)} ({per_sample} bytes each)")
        x = np.frombuffer(body, dtype="<f4").reshape(samples, *shape)
        start = time.perf_counter()
        outputs = await asyncio.get_running_loop().run_in_executor(None, runner.many, x)
        self.seconds.observe(time.perf_counter() - start)
        self.requests.labels(result=OK).inc()
        return 200, {"outputs": np.asarray(outputs).reshape(samples, -1).tolist()}

    def _authenticate(self, request: web.Request, body: bytes) -> tuple[int, dict[str, object]] | None:
        registry = self.registry()
        if registry is None:
            return self._refuse(NO_REGISTRY, 403, "this gateway has no device registry: tails serve identified "
                                                  "devices only")
        device = request.headers.get(DEVICE_HEADER, "")
        namespace, _, name = device.partition("/")
        key = registry.get((namespace, name))
        if key is None:
            return self._refuse(UNKNOWN_DEVICE, 401, f"{DEVICE_HEADER}: {device[:80]!r} has no registered identity key")
        timestamp = request.headers.get(TIME_HEADER, "")
        try:
            skew = abs(self.clock() - float(timestamp))
        except ValueError:
            return self._refuse(STALE, 401, f"{TIME_HEADER}: {timestamp[:40]!r} is not unix seconds")
        if not skew <= MAX_SKEW_S:
            return self._refuse(STALE, 401, f"{TIME_HEADER}: {skew:.0f} s away from now, at most {MAX_SKEW_S:.0f}")
        try:
            verify(key, signed_bytes(request.path, timestamp, body), request.headers.get(SIGNATURE_HEADER, ""),
                   what=f"tail request from {device}")
        except SignatureError as exc:
            return self._refuse(BAD_SIGNATURE, 401, str(exc))
        if not self.limiter.allow((namespace, name)):
            return self._refuse(RATE_LIMITED, 429, f"device {device} sends more than {self.limiter.rate:g} tail "
                                                   "requests per second")
        return None

    def _runner(self, namespace: str, model: str, digest: str) -> Runner | None:
        if not (SHA256.fullmatch(digest) and NAME.fullmatch(namespace) and NAME.fullmatch(model)):
            return None
        runner = self._sessions.get(digest)
        if runner is not None:
            self._sessions.move_to_end(digest)
            return runner
        try:
            blob = self.store.get(blob_key(model_prefix(namespace, model), digest))
            check_digest(blob, digest, what=f"tail {digest[:12]}…", named_by="the request path")
            runner = Runner.load(blob)
        except (OSError, IntegrityError, ValueError):
            return None
        except Exception:  # onnxruntime refuses the bytes: not a tail this gateway can run  # noqa: BLE001
            return None
        self._sessions[digest] = runner
        if len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return runner

    def _refuse(self, result: str, status: int, message: str) -> tuple[int, dict[str, object]]:
        self.requests.labels(result=result).inc()
        return status, {"error": message, "reason": result}
