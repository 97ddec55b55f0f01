"""The device registry the operator publishes in the artifact store, reloaded by the gateway when it changes.

The operator builds the registry from the identity keys on the devices' KubeEdge
`Device` objects and writes it to `layout.DEVICE_REGISTRY_KEY` (the format of
`gateway run --registry FILE`, `authn.parse_registry`); the gateway reads the
store it serves anyway.  Before each batch of reports it asks the store whether
that key changed, for the price of a stat (`ArtifactStore.stamp`), and reloads
it when it did, so a Device added later is accepted as soon as the operator has
written it down.  Until the operator's first write no device is registered and
every report is refused (`unknown-device`): authentication fails closed.  A
registry that does not parse keeps the previous one in force, and says so.

The store and not an HTTP endpoint: the gateway already trusts the store for
everything it serves, the registry survives a restart of either side, every
gateway replica reads the same one, and no new credential is needed between
operator and gateway.  A registry is not secret (public keys), but it lists the
fleet's devices, so `registry/` is not among the roots the gateway serves.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

from tinymlops.errors import ConfigError
from tinymlops.gateway.authn import ReportGuard, parse_registry
from tinymlops.layout import DEVICE_REGISTRY_KEY
from tinymlops.store import ArtifactStore

log = logging.getLogger(__name__)


class StoreRegistry:
    def __init__(self, store: ArtifactStore, key: str = DEVICE_REGISTRY_KEY) -> None:
        self.store, self.key = store, key
        self._stamp: Hashable | None = None
        self.error: str | None = None  # why the registry last failed to load; None: it loaded

    def refresh(self, guard: ReportGuard) -> bool:
        """Give `guard` the store's registry if it changed since the last call; True when it was replaced."""
        try:
            stamp = self.store.stamp(self.key)
        except FileNotFoundError:
            return False  # not written yet (nothing registered), or gone: keep what is in force
        if stamp == self._stamp:
            return False
        try:
            data, stamp = self.store.get_stamped(self.key)
            registry = parse_registry(data, source=self.key)
        except FileNotFoundError:
            return False
        except ConfigError as exc:
            self._stamp, self.error = stamp, str(exc)
            log.error("device registry not reloaded, the previous one stays in force: %s", exc)
            return False
        self._stamp, self.error = stamp, None
        guard.replace_registry(registry)
        log.info("device registry %s: %d registered devices", self.key, len(registry))
        return True
