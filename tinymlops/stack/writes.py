"""The one count of the Kubernetes API writes the operator makes, from the API emulator's request records.

`ApiEmulator.requests` counts every resource request by (client, verb, group,
resource[/subresource]), the client being the User-Agent's product.  Here
those records become the form the demo report keeps ("kopf patch
tinymlops.io/devicefleets/status": 3), and `operator_writes` sums what the
operator's own clients wrote: status subresources, objects, Events, Secrets,
whatever it was.  The demo report, the benchmarks (which read that report)
and the tests all count through these functions, so a figure means the same
everywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tinymlops.stack.emulator import ApiEmulator

# The User-Agent products of the operator's two API clients: kopf's, and the `kubernetes` client that
# reads and creates Secrets (tinymlops_operator.secrets.USER_AGENT).
OPERATOR_CLIENTS = ("kopf", "tinymlops-operator")
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

RequestKey = tuple[str, str, str, str]  # (client, verb, group, resource[/subresource])


def request_key(client: str, verb: str, group: str, resource: str) -> str:
    """'client verb group/resource' (core group: 'core'), the report's key for one kind of request."""
    return f"{client or '-'} {verb} {group or 'core'}/{resource}"


def writes_by_request(requests: Mapping[RequestKey, int]) -> dict[str, int]:
    """Every write among `requests` (all clients), keyed as the report keeps them, sorted."""
    return {request_key(*key): count for key, count in sorted(requests.items())
            if key[1] in WRITE_VERBS and count}


def emulator_writes(emulator: ApiEmulator) -> dict[str, int]:
    """Every write the running emulator has served so far, as `writes_by_request` keys them."""
    return writes_by_request(emulator.requests)


def writes_between(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """The writes made after `before` was taken (both from `writes_by_request`)."""
    return dict(sorted((Counter(after) - Counter(before)).items()))


def operator_writes(writes: Mapping[str, int]) -> int:
    """How many of `writes` (from `writes_by_request`) the operator made: the count every figure uses."""
    return sum(only_operator(writes).values())


def only_operator(writes: Mapping[str, int]) -> dict[str, int]:
    """The operator's share of `writes`, by request: what to look at when the count is not what it should be."""
    return {key: count for key, count in writes.items() if _by_operator(key)}


def _by_operator(key: str) -> bool:
    client, verb, _ = key.split(" ", 2)
    return client in OPERATOR_CLIENTS and verb in WRITE_VERBS
