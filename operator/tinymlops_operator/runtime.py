"""What the handlers share for the operator's lifetime, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.signing import load_private_key
from tinymlops.store import ArtifactStore, DirectoryStore
from tinymlops_operator.config import Settings
from tinymlops_operator.federated import FederatedLauncher, TrainFn, federated_train_fn
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
    trainings: FederatedLauncher = field(default_factory=lambda: FederatedLauncher(_no_training))


def _no_training(request: Any) -> dict[str, Any]:
    raise RuntimeError("this runtime was built without federated training")


def pipeline_build_fn(settings: Settings) -> BuildFn:
    """The real build: the KFP v2 variants pipeline, locally through kfp.local or on a KFP backend."""

    def build(request: BuildRequest) -> Built:
        from tinymlops_operator.secrets import licensee_data_key, model_data_key, secret_signing_key
        from tinymlops_operator.secrets import watermark_key as watermark_key_path
        from tinymlops_pipelines.runner import VariantsBuild, build_variants

        signing_key = settings.signing_key
        if request.signing_secret is not None:
            secret, key = request.signing_secret
            signing_key = secret_signing_key(request.namespace, secret, key,
                                             keys_dir=settings.pipeline_root.parent / "model-keys")
        keys_dir = settings.pipeline_root.parent / "model-keys"

        def data_key(licensee: str) -> Path | None:
            """The model's data key, or `licensee`'s own: each menu opens only for its own recipients."""
            if not request.encrypted:
                return None
            if licensee:
                return licensee_data_key(request.namespace, request.name, licensee, keys_dir=keys_dir)
            return model_data_key(request.namespace, request.name, keys_dir=keys_dir)

        watermark_key = None
        if request.watermark is not None:
            secret, key = request.watermark.key_secret
            watermark_key = watermark_key_path(request.namespace, secret, key,
                                               keys_dir=settings.pipeline_root.parent / "model-keys")

        def run(licensee: str = "") -> VariantsBuild:
            return build_variants(
                source_uri=request.source_uri,
                data_uri=request.data_uri,
                store_root=settings.store_root,
                namespace=request.namespace,
                name=request.name,
                variants=list(request.variants),
                accuracy_budget=request.accuracy_budget,
                menu_version=request.menu_version,
                signing_key_path=signing_key,
                data_key_path=data_key(licensee),
                recipients=list(request.recipients_of(licensee)),
                pre_uri=request.pre_uri,
                post_uri=request.post_uri,
                split_parts=request.split_parts,
                tuning=request.tuning,
                pipeline_root=settings.pipeline_root,
                cache_dir=settings.cache_dir,
                kfp_host=settings.kfp_host,
                licensee=licensee,
                watermark_key_path=watermark_key if licensee else None,
            )

        result = run()
        # One pipeline run per licensee, each embedding first and building the whole matrix from its copy.
        licensed = {licensee: run(licensee).menu
                    for licensee in (request.watermark.licensees if request.watermark else ())}
        return Built(menu=result.menu, run=result.run.as_status(), licensees=licensed)

    return build


def create_runtime(settings: Settings, build: BuildFn | None = None, train: TrainFn | None = None) -> Runtime:
    return Runtime(
        settings=settings,
        store=DirectoryStore(settings.store_root),
        signing_key=load_private_key(settings.signing_key.read_bytes(), source=str(settings.signing_key)),
        launcher=PipelineLauncher(build or pipeline_build_fn(settings)),
        trainings=FederatedLauncher(train or federated_train_fn(settings.store_root, settings.federated_data_dir,
                                                                settings.federated_cpus,
                                                                superlink_host=settings.superlink_host)),
    )
