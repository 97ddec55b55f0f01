"""A Kubernetes API on loopback, built on `kmock.KubernetesEmulator`, complete enough for kopf and kubectl.

kmock gives us the request parsing, the Status error rendering and the discovery documents
(`/api`, `/apis`, `/apis/<group>/<version>`, fed from `ResourceInfo` records). Its own object
handling is deliberately naive (no resourceVersion, generation, status subresource, JSON patch,
schemas or watch resumption), so the subclass here serves every resource request itself:

* objects get uid, resourceVersion (one global counter), generation and creationTimestamp;
* `<plural>/status` is a real subresource for the kinds that declare it;
* merge, strategic-merge (as merge) and JSON patches, PUT with optimistic concurrency;
* CRD schemas (`tinymlops.kube.schema`) default, prune and validate; failures are 422 Invalid;
* watches resume from a resourceVersion (410 Expired when it is too old) and honour timeoutSeconds;
* deletion waits for finalizers; `kubectl get` receives server-side Tables with the printer columns.

kmock 0.8 parses `/api/v1/namespaces` as the prefix of a namespaced path and fails on it, which is
why kopf could only run cluster-wide against it; requests are parsed here with that case fixed.

The pieces, from the outside in:

* `server` — `ApiEmulator`: the aiohttp server on loopback, the kubeconfig, thread-safe reads;
* `handler` — `KubeHandler`, the kmock subclass that routes resource requests to the store;
* `parsing` — kmock's request parsing with the namespaces fix;
* `store` — the objects: metadata, generation, resourceVersion, schemas, finalizers, the watch log;
* `watches` — replaying and following that log for one watch;
* `resources` — `ResourceType`, the built-ins and the types a CRD adds;
* `errors` — the API server's Status errors (NotFound, Conflict, Invalid, ...);
* `patches`, `selectors`, `tables`, `schemas` — pure helpers: patch types, label and field selectors,
  server-side printing for kubectl, pruning of unknown fields.

Only `server`, `handler` and `parsing` touch aiohttp and kmock.
"""

from tinymlops.stack.emulator.errors import ApiError
from tinymlops.stack.emulator.handler import KubeHandler
from tinymlops.stack.emulator.resources import ResourceType, crd_resource_types
from tinymlops.stack.emulator.server import ApiEmulator
from tinymlops.stack.emulator.store import Store

__all__ = ["ApiEmulator", "ApiError", "KubeHandler", "ResourceType", "Store", "crd_resource_types"]
