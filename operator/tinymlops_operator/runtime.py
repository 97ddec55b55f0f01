"""What the handlers share for the operator's lifetime, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.signing import load_private_key
from tinymlops.store import ArtifactStore, DirectoryStore
from tinymlops_operator.config import Settings
from tinymlops_operator.launcher import BuildFn, Built, PipelineLauncher
from tinymlops_operator.logic.edgemodel import BuildRequest
from tinymlops_operator.logic.rejections import Announced
from tinymlops_operator.metrics import OperatorMetrics


@dataclass
class Runtime:
    settings: Settings
    store: ArtifactStore
    signing_key: Ed25519PrivateKey
    launcher: PipelineLauncher
    http: aiohttp.ClientSession | None = None
    pending: dict[str, BuildRequest] = field(default_factory=dict)
    # store key of a menu kept by digest -> the parsed menu (immutable, so parsed once)
    menus: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    # (namespace, fleet) -> device -> the refusals last announced in a ReportsRejected Event (logic/rejections.py)
    rejections_announced: dict[tuple[str, str], dict[str, Announced]] = field(default_factory=dict)


def pipeline_build_fn(settings: Settings) -> BuildFn:
    """The real build: the KFP v2 variants pipeline, locally through kfp.local or on a KFP backend."""

    def build(request: BuildRequest) -> Built:
        from tinymlops_operator.secrets import model_data_key, secret_signing_key
        from tinymlops_pipelines.runner import build_variants

        signing_key = settings.signing_key
        if request.signing_secret is not None:
            secret, key = request.signing_secret
            signing_key = secret_signing_key(request.namespace, secret, key,
                                             keys_dir=settings.pipeline_root.parent / "model-keys")
        data_key = None
        if request.recipients:
            data_key = model_data_key(request.namespace, request.name,
                                      keys_dir=settings.pipeline_root.parent / "model-keys")

        result = build_variants(
            source_uri=request.source_uri,
            data_uri=request.data_uri,
            store_root=settings.store_root,
            namespace=request.namespace,
            name=request.name,
            variants=list(request.variants),
            accuracy_budget=request.accuracy_budget,
            menu_version=request.menu_version,
            signing_key_path=signing_key,
            data_key_path=data_key,
            recipients=list(request.recipients),
            pre_uri=request.pre_uri,
            post_uri=request.post_uri,
            tuning=request.tuning,
            pipeline_root=settings.pipeline_root,
            cache_dir=settings.cache_dir,
            kfp_host=settings.kfp_host,
        )
        return Built(menu=result.menu, run=result.run.as_status())

    return build


def create_runtime(settings: Settings, build: BuildFn | None = None) -> Runtime:
    return Runtime(
        settings=settings,
        store=DirectoryStore(settings.store_root),
        signing_key=load_private_key(settings.signing_key.read_bytes(), source=str(settings.signing_key)),
        launcher=PipelineLauncher(build or pipeline_build_fn(settings)),
    )
