"""Requests as kmock sees them, parsed here because kmock 0.8 misreads the namespaces resource.

kmock parses `/api/v1/namespaces` as the prefix of a namespaced path and fails on it, which is why kopf
could only run cluster-wide against it. `parse_path` fixes that case and leaves the rest to kmock;
`parse_request` builds kmock's `Request` with it, so kmock's discovery and matching keep working.
"""

from __future__ import annotations

import json

import aiohttp.web
import kmock
from kmock._internal import parsing, rendering


def parse_path(path: str) -> parsing.ParsedPath:
    """kmock's path parsing, plus `/api/v1/namespaces[/<name>[/status|finalize]]`, which kmock 0.8 misreads."""
    parts = path.strip("/").split("/")
    start = 2 if parts[:1] == ["api"] else 3 if parts[:1] == ["apis"] else 0
    rest = parts[start:] if start and len(parts) > start else []
    own_subresource = len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest[:1] == ["namespaces"] and (len(rest) <= 2 or own_subresource):
        group = "" if start == 2 else parts[1]
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if own_subresource else None
        return parsing.ParsedPath(group, parts[start - 1], "namespaces", None, name, subresource)
    return parsing.parse_path(path)


async def parse_request(raw: aiohttp.web.BaseRequest, *, id: int) -> rendering.Request:
    body = await raw.read()
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    k8s = parse_path(raw.path)
    resource = None if k8s.group is None else kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
    return rendering.Request(
        id=id, raw_request=raw, url=raw.url, method=raw.method, params=dict(raw.query), headers=dict(raw.headers),
        cookies=dict(raw.cookies), data=data, body=body, text=body.decode("utf-8", "replace"),
        action=parsing.guess_k8s(k8s, kmock.method(raw.method), dict(raw.query)),
        resource=resource, namespace=k8s.namespace, name=k8s.name, subresource=k8s.subresource,
    )
