"""One inference where the hybrid choice puts it: all on the device, split with the gateway's tail service, or
a cascade that sends the inputs the device is unsure of to a larger cloud variant.

`selection.hybrid.choose_mode` decides from the link this device measured (`LinkEstimate`: the bandwidth
and round-trip time of its own tail requests, smoothed), the variant's split points and the device's class;
`HybridExecutor` runs the head here and posts the tensor to the gateway (`TailClient`, signed with the
device's identity key, `tinymlops/tailrequest.py`).  A tail request that fails (the gateway unreachable or
refusing) answers that inference locally, marks the link unreachable until RETRY_AFTER_S has passed, and is
counted; the device never waits on a link it cannot see.  Every choice is kept with its reason.  While the
choice is local, one tail request on zeros every PROBE_EVERY_S measures the link beside the inferences (never
delaying one), so a device sees its link get better again.

A cascade runs the device's own variant first and posts the input itself (the cloud variant's whole graph is a
"tail" whose input is the model's, so the same service runs it) only when the answer's top-class probability is
below the policy's threshold, and only with `consent_inputs` (the fleet owner's consent that inputs may leave
the device); when the cloud does not answer, the device's own answer stands.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from tinymlops.errors import GatewayError
from tinymlops.runners import VariantRunner
from tinymlops.selection.hybrid import Costs, HybridChoice, HybridPolicy, Link, choose_mode
from tinymlops.tailrequest import sign_request, tail_path

RETRY_AFTER_S = 30.0  # after a failed tail request, local only for this long
# While local, one inference in this many seconds runs split at the smallest point: without it a device that
# chose local on a slow link would never see the link get faster.
PROBE_EVERY_S = 10.0
EWMA = 0.5  # weight of the newest answer in the share of unsure ones
LINK_WINDOW = 4  # tail requests the link estimate remembers


@dataclass
class LinkEstimate:
    """Bandwidth and RTT as this device measured them on its last LINK_WINDOW tail requests, and whether the
    server answered lately.

    The RTT is the smallest time on the wire in the window; each request's time beyond it is its transfer, and
    the bandwidth is the median of what those say (a request with nothing beyond the RTT, such as the first,
    whose small tensor's transfer is lost in it, says the link is at its best: a 10 µs floor).  A window, not
    an all-time minimum and a long average: when the device moves from a LAN to EDGE and back, both numbers
    follow within a few requests instead of carrying the other link's RTT for minutes."""

    bandwidth_bps: float | None = None
    rtt_ms: float | None = None
    down_until: float = 0.0
    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=LINK_WINDOW))

    def observe(self, sent_bytes: int, seconds: float, server_ms: float) -> None:
        """A tail request of `sent_bytes` took `seconds` in all, `server_ms` of it running the tail."""
        self.recent.append((sent_bytes, max(seconds * 1000 - server_ms, 0.01)))
        rtt = min(ms for _, ms in self.recent)
        self.rtt_ms = rtt
        self.bandwidth_bps = statistics.median(8000.0 * size / max(ms - rtt, 0.01) for size, ms in self.recent)

    def link(self, now: float) -> Link:
        return Link(self.bandwidth_bps, self.rtt_ms, reachable=now >= self.down_until)


class TailClient:
    """Posts a head's output to the gateway's tail service, signed with the device's identity key."""

    def __init__(self, base_url: str, key: Ed25519PrivateKey, device: tuple[str, str], *, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.base_url, self.key, self.device = base_url.rstrip("/"), key, device
        self.timeout_s, self.clock = timeout_s, clock

    def run(self, model: tuple[str, str], tail_sha256: str, tensor: NDArray[np.float32]) -> NDArray[np.float32]:
        """The tail's outputs for `tensor` (batch first); GatewayError naming why when there are none."""
        path = tail_path(model[0], model[1], tail_sha256)
        body = np.ascontiguousarray(tensor, dtype="<f4").tobytes()
        headers = {**sign_request(self.key, self.device, path, body, self.clock()),
                   "Content-Type": "application/octet-stream"}
        request = urllib.request.Request(self.base_url + path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 (our gateway)
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise GatewayError(f"tail {tail_sha256[:12]}…: the gateway refused it ({exc.code}: "
                               f"{exc.read()[:200].decode(errors='replace')})") from exc
        except (OSError, ValueError) as exc:
            raise GatewayError(f"tail {tail_sha256[:12]}…: the gateway did not answer ({exc})") from exc
        return np.asarray(answer["outputs"], dtype=np.float32)


@dataclass
class HybridExecutor:
    """Runs the active variant locally or split at the chosen point; `heads` and `tails` by split point k."""

    runner: VariantRunner
    heads: Mapping[int, VariantRunner]
    tails: Mapping[int, str]  # the tail blob's sha256 per split point
    costs: Costs
    policy: HybridPolicy
    client: TailClient
    model: tuple[str, str]  # namespace, name: where the gateway finds the tails
    clock: Callable[[], float] = time.time
    cloud: str | None = None  # the cloud variant's sha256 (in the same model folder); None: no cascade
    consent_inputs: bool = False  # inputs may leave the device (a cascade sends them)
    link: LinkEstimate = field(default_factory=LinkEstimate)
    choice: HybridChoice | None = None
    modes: Counter[str] = field(default_factory=Counter)  # inferences per mode run ("local", "split@k")
    bytes_sent: int = 0
    fallbacks: int = 0  # split or cascade chosen, the request failed, answered locally
    low_confidence_share: float = 0.0  # of the device's own answers (EWMA), what a cascade would send
    # A simulated device's link: the seconds a request of n bytes takes, the server's ms included (GatewayError:
    # no link now); None: the wall time measured (a real device).  Its compute then comes from `costs`.
    link_model: Callable[[int, float], float] | None = None
    probe_every_s: float = PROBE_EVERY_S
    probes: int = 0  # inferences split while the choice was local, to measure the link
    last_ms: float = 0.0  # the last inference end to end: measured, or simulated under `link_model`
    _measured_at: float = -math.inf
    _wire_ms: float = 0.0
    _simulated_ms: float = 0.0

    def decide(self) -> HybridChoice:
        costs = Costs(self.costs.device_ms, self.costs.fits,
                      [s for s in self.costs.splits if s.k in self.heads and s.k in self.tails],
                      self.costs.input_bytes, self.costs.cloud_ms if self.cloud else None, self.low_confidence_share)
        self.choice = choose_mode(costs, self.link.link(self.clock()), self.policy, consent_inputs=self.consent_inputs)
        return self.choice

    def one(self, sample: NDArray[np.float32]) -> NDArray[np.float32]:
        start = time.perf_counter()
        choice = self.decide()
        out = self._split(sample, choice.k) if choice.mode == "split" and choice.k is not None else None
        if out is None:
            out = self.runner.one(sample)
            self._simulated_ms = self.costs.device_ms
            if choice.mode == "cascade":
                out = self._cascade(sample, out)
            else:
                self.modes["local"] += 1
        self.last_ms = self._simulated_ms if self.link_model is not None else (time.perf_counter() - start) * 1000
        probe = self._probe_point(choice)
        if probe is not None:
            self._probe(probe, sample)
        return out

    def _probe(self, k: int, sample: NDArray[np.float32]) -> None:
        """Measure the link with split point k's tail on zeros (nothing of the input leaves the device), beside
        the inference: on its own thread on a real device, so the answer never waits for it; at once on a
        simulated link, whose time is computed, not waited for."""
        zeros = self.heads[k].one(np.zeros_like(sample))[None] * 0
        tail_ms = next(s.tail_ms for s in self.costs.splits if s.k == k)
        if self.link_model is not None:
            self._post(self.tails[k], zeros, tail_ms)
        else:
            threading.Thread(target=self._post, args=(self.tails[k], zeros, tail_ms), daemon=True,
                             name="tinymlops-link-probe").start()

    def _probe_point(self, choice: HybridChoice) -> int | None:
        """The split point to measure the link with while the choice stays local (the smallest tensor), when
        the link was not measured for `probe_every_s` and the server is not known to be down; else None."""
        now = self.clock()
        usable = [s for s in self.costs.splits if s.k in self.heads and s.k in self.tails]
        if choice.mode != "local" or not usable or not self.link.link(now).reachable or (
                now - self._measured_at < self.probe_every_s):
            return None
        self.probes += 1
        self._measured_at = now  # one probe per interval, answered or not
        return min(usable, key=lambda s: s.bytes).k

    def _split(self, sample: NDArray[np.float32], k: int) -> NDArray[np.float32] | None:
        """Head here, tail on the gateway; None when the gateway did not answer (then local)."""
        split = next(s for s in self.costs.splits if s.k == k)
        middle = self.heads[k].one(sample)[None]
        out = self._post(self.tails[k], middle, split.tail_ms)
        if out is None:
            return None
        self.modes[f"split@{k}"] += 1
        self._simulated_ms = split.head_ms + self._wire_ms
        first: NDArray[np.float32] = out[0]
        return first

    def _post(self, digest: str, tensor: NDArray[np.float32], server_ms: float) -> NDArray[np.float32] | None:
        """The server's answer for `tensor`, the link measured on the way; None (counted, local for
        RETRY_AFTER_S) when it did not answer."""
        start = time.perf_counter()
        try:
            simulated = self.link_model(tensor.nbytes, server_ms) if self.link_model is not None else None
            out = self.client.run(self.model, digest, tensor)
        except GatewayError as exc:
            self.fallbacks += 1
            self.link.down_until = self.clock() + RETRY_AFTER_S
            self.choice = HybridChoice("local", None, self.costs.device_ms, 0.0, f"local: {exc}")
            return None
        seconds = simulated if simulated is not None else time.perf_counter() - start
        self.link.observe(tensor.nbytes, seconds, server_ms)
        self._measured_at = self.clock()
        self._wire_ms = seconds * 1000
        self.bytes_sent += tensor.nbytes
        return out

    def _cascade(self, sample: NDArray[np.float32], out: NDArray[np.float32]) -> NDArray[np.float32]:
        """The device's answer, or the cloud variant's when the device is unsure and the cloud answers."""
        unsure = confidence(out) < self.policy.threshold
        self.low_confidence_share = EWMA * float(unsure) + (1 - EWMA) * self.low_confidence_share
        cloud = self._post(self.cloud, sample[None], self.costs.cloud_ms or 0.0) if unsure and self.cloud else None
        if cloud is None:
            self.modes["cascade-local"] += 1
            return out
        self.modes["cascade-cloud"] += 1
        self._simulated_ms += self._wire_ms
        answer: NDArray[np.float32] = cloud[0]
        return answer


def confidence(scores: NDArray[np.float32]) -> float:
    """The top-class probability of one output: as it is when it already is a distribution, else its softmax."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    # An int8 softmax sums to 1 only within its quantisation steps (1/255 per class).
    if np.all((flat >= 0) & (flat <= 1)) and abs(flat.sum() - 1.0) <= 0.05:
        return float(flat.max())
    exp = np.exp(flat - flat.max())
    return float(exp.max() / exp.sum())
