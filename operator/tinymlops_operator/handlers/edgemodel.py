"""EdgeModel IO: submit the variants pipeline for a new generation, publish its result in status."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import kopf

from tinymlops import errors
from tinymlops.layout import licensee_prefix, menu_key, model_prefix
from tinymlops.store import sha256_bytes
from tinymlops_operator.logic import edgemodel as logic
from tinymlops_operator.runtime import Runtime


def _published_menu_version(runtime: Runtime, namespace: str, name: str) -> int:
    """The version already in the store, so a lost status never makes the version go backwards."""
    try:
        menu = json.loads(runtime.store.get(menu_key(model_prefix(namespace, name))))
        return int(menu.get("version", 0))
    except (FileNotFoundError, ValueError, json.JSONDecodeError):
        return 0


def start_build_if_needed(
    *,
    runtime: Runtime,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    name: str,
    namespace: str,
    generation: int,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
) -> None:
    if not logic.needs_build(status, generation, time.time()):
        return
    try:
        request = _build_request(runtime, spec, status, namespace=namespace, name=name, generation=generation)
    except errors.SpecError as exc:
        patch.status.update(logic.failed_status(status, exc, generation, time.time()))
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        return
    _submit(runtime, request)
    patch.status.update(logic.building_status(status, request))
    kopf.info(body, reason="Building", message=f"variants pipeline started for {request.source_uri}")
    logger.info("variants pipeline submitted for %s", request.run_key)


def poll_build(
    *,
    runtime: Runtime,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    name: str,
    namespace: str,
    generation: int,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
) -> None:
    """Timer: finish a running build, resubmit one lost in a restart, or start a due retry."""
    if status.get("phase") != "Building" or status.get("observedGeneration") != generation:
        start_build_if_needed(
            runtime=runtime, spec=spec, status=status, name=name, namespace=namespace,
            generation=generation, body=body, patch=patch, logger=logger,
        )
        return
    run_key = logic.run_key(namespace, name, generation)
    if not runtime.launcher.knows(run_key):
        # The operator restarted mid-build: the build is idempotent (digest-keyed cache), run it again.
        _submit(runtime, runtime.pending.get(run_key) or _build_request(
            runtime, spec, status, namespace=namespace, name=name, generation=generation))
        return
    outcome = runtime.launcher.poll(run_key)
    if outcome is None:
        return
    runtime.pending.pop(run_key, None)
    if outcome.error is not None:
        patch.status.update(logic.failed_status(status, outcome.error, generation, time.time()))
        kopf.warn(body, reason="BuildFailed", message=str(outcome.error))
        logger.warning("variants pipeline failed for %s: %s", run_key, outcome.error)
        return
    assert outcome.built is not None
    menu_bytes = runtime.store.get(menu_key(model_prefix(namespace, name)))
    licensees = [logic.licensee_status(licensee, menu, sha256_bytes(runtime.store.get(
                     menu_key(licensee_prefix(namespace, name, licensee)))))
                 for licensee, menu in outcome.built.licensees.items()]
    update = logic.ready_status(status, outcome.built.menu, sha256_bytes(menu_bytes), generation,
                                run=outcome.built.run, licensees=licensees, encrypted=bool(spec.get("encryption")))
    patch.status.update(update)
    if licensees and not spec.get("encryption"):
        kopf.warn(body, reason="LicenseeMenusUnencrypted", message=logic.UNENCRYPTED_LICENSEE_MENUS)
    kopf.info(
        body,
        reason="VariantsBuilt",
        message=f"menu v{update['menuVersion']} published with {len(update['variants'])} variants",
    )


def _build_request(
    runtime: Runtime, spec: Mapping[str, Any], status: Mapping[str, Any], *, namespace: str, name: str,
    generation: int,
) -> logic.BuildRequest:
    """This generation's build; its menu version follows the newer of status and the store."""
    previous = max(int(status.get("menuVersion", 0)), _published_menu_version(runtime, namespace, name))
    return logic.build_request(spec, namespace=namespace, name=name, generation=generation,
                               previous_menu_version=previous)


def _submit(runtime: Runtime, request: logic.BuildRequest) -> None:
    runtime.launcher.submit(request)
    runtime.pending[request.run_key] = request
