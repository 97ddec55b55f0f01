"""One inference where the hybrid choice puts it: all on the device, split with the gateway's tail service, or
a cascade that sends the inputs the device is unsure of to a larger cloud variant.

`selection.hybrid.choose_mode` decides from the link this device measured (`LinkEstimate`: the bandwidth
and round-trip time of its own tail requests, smoothed), the variant's split points and the device's class;
`HybridExecutor` runs the head here and posts the tensor to the gateway (`TailClient`, signed with the
device's identity key, `tinymlops/tailrequest.py`).  A tail request that fails (the gateway unreachable or
refusing) answers that inference locally, marks the link unreachable until RETRY_AFTER_S has passed, and is
counted; the device never waits on a link it cannot see.  Every choice is kept with its reason.

A cascade runs the device's own variant first and posts the input itself (the cloud variant's whole graph is a
"tail" whose input is the model's, so the same service runs it) only when the answer's top-class probability is
below the policy's threshold, and only with `consent_inputs` (the fleet owner's consent that inputs may leave
the device); when the cloud does not answer, the device's own answer stands.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
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
EWMA = 0.5  # weight of the newest measurement


@dataclass
class LinkEstimate:
    """Bandwidth and RTT as this device measured them on its tail requests (an EWMA), and whether the server
    answered lately."""

    bandwidth_bps: float | None = None
    rtt_ms: float | None = None
    down_until: float = 0.0

    def observe(self, sent_bytes: int, seconds: float, server_ms: float) -> None:
        """A tail request of `sent_bytes` took `seconds` in all, `server_ms` of it running the tail."""
        on_wire_ms = max(seconds * 1000 - server_ms, 0.01)
        rtt = min(on_wire_ms, self.rtt_ms) if self.rtt_ms is not None else on_wire_ms
        bandwidth = 8000.0 * sent_bytes / max(on_wire_ms - rtt, 0.01) if on_wire_ms > rtt else None
        self.rtt_ms = rtt if self.rtt_ms is None else EWMA * rtt + (1 - EWMA) * self.rtt_ms
        if bandwidth is not None:
            self.bandwidth_bps = bandwidth if self.bandwidth_bps is None else (
                EWMA * bandwidth + (1 - EWMA) * self.bandwidth_bps)

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

    def decide(self) -> HybridChoice:
        costs = Costs(self.costs.device_ms, self.costs.fits,
                      [s for s in self.costs.splits if s.k in self.heads and s.k in self.tails],
                      self.costs.input_bytes, self.costs.cloud_ms if self.cloud else None, self.low_confidence_share)
        self.choice = choose_mode(costs, self.link.link(self.clock()), self.policy, consent_inputs=self.consent_inputs)
        return self.choice

    def one(self, sample: NDArray[np.float32]) -> NDArray[np.float32]:
        choice = self.decide()
        if choice.mode == "split" and choice.k is not None:
            middle = self.heads[choice.k].one(sample)[None]
            start = time.perf_counter()
            try:
                out = self.client.run(self.model, self.tails[choice.k], middle)
            except GatewayError as exc:
                self.fallbacks += 1
                self.link.down_until = self.clock() + RETRY_AFTER_S
                self.choice = HybridChoice("local", None, self.costs.device_ms, 0.0, f"local: {exc}")
            else:
                split = next(s for s in self.costs.splits if s.k == choice.k)
                self.link.observe(middle.nbytes, time.perf_counter() - start, split.tail_ms)
                self.modes[f"split@{choice.k}"] += 1
                self.bytes_sent += middle.nbytes
                first: NDArray[np.float32] = out[0]
                return first
        out = self.runner.one(sample)
        if choice.mode == "cascade":
            return self._cascade(sample, out)
        self.modes["local"] += 1
        return out

    def _cascade(self, sample: NDArray[np.float32], out: NDArray[np.float32]) -> NDArray[np.float32]:
        """The device's answer, or the cloud variant's when the device is unsure and the cloud answers."""
        unsure = confidence(out) < self.policy.threshold
        self.low_confidence_share = EWMA * float(unsure) + (1 - EWMA) * self.low_confidence_share
        if not unsure or self.cloud is None:
            self.modes["cascade-local"] += 1
            return out
        start = time.perf_counter()
        try:
            cloud = self.client.run(self.model, self.cloud, sample[None])
        except GatewayError as exc:
            self.fallbacks += 1
            self.link.down_until = self.clock() + RETRY_AFTER_S
            self.choice = HybridChoice("local", None, self.costs.device_ms, 0.0, f"local: {exc}")
            self.modes["cascade-local"] += 1
            return out
        self.link.observe(sample.nbytes, time.perf_counter() - start, self.costs.cloud_ms or 0.0)
        self.modes["cascade-cloud"] += 1
        self.bytes_sent += sample.nbytes
        answer: NDArray[np.float32] = cloud[0]
        return answer


def confidence(scores: NDArray[np.float32]) -> float:
    """The top-class probability of one output: as it is when it already is a distribution, else its softmax."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.all(flat >= 0) and abs(flat.sum() - 1.0) <= 1e-3:
        return float(flat.max())
    exp = np.exp(flat - flat.max())
    return float(exp.max() / exp.sum())
