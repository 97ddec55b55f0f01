"""Run the variants pipeline and return the published, verified menu.

Without a KFP host the pipeline runs here through `kfp.local` with the
SubprocessRunner (use_venv=False: each task is a subprocess of
`sys.executable`, so it sees the packages of this environment).  With a host
the committed IR YAML is submitted through `kfp.Client` and awaited; the
tasks then need the artifact store and signing key mounted at the same
paths.  Either way the menu is read back from the store, its signature
verified, and checked to be the one this run published (a local run also
compares the digest its last task returned), and the result names the run
(`PipelineRun`) for the EdgeModel's status.

Errors: the source, data and variant ids are checked in-process before a
local run, so the common mistakes raise InvalidModelError/InvalidDataError/
SpecError naming the source without starting a task.  A task that still
fails prints a marker (see `errors.py`) that is turned back into the same
TinyMLOps error; anything else becomes PipelineRunError with the output tail.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinymlops import errors
from tinymlops.errors import PipelineRunError
from tinymlops.layout import menu_key, menu_prefix, signature_key
from tinymlops.menu import load_verified_menu
from tinymlops.signing import load_private_key
from tinymlops.store import ArtifactStore, DirectoryStore, digest_matches
from tinymlops.variants.tvm_tune import Tuning
from tinymlops_pipelines.compile import COMPILED
from tinymlops_pipelines.errors import parse_reported_error

log = logging.getLogger(__name__)

KEEP_LOCAL_RUNS = 10
REMOTE_TIMEOUT_SECONDS = 3600
OUTPUT_TAIL_LINES = 20


@dataclass(frozen=True)
class PipelineRun:
    """The run that built a menu: its KFP run id (kfp.local: the local run's name) and, for a run on a
    Kubeflow Pipelines backend, its page in the KFP UI."""

    id: str
    url: str | None = None

    def as_status(self) -> dict[str, str]:
        return {"id": self.id, **({"url": self.url} if self.url else {})}


@dataclass(frozen=True)
class VariantsBuild:
    menu: dict[str, Any]  # the published menu, signature verified
    run: PipelineRun


def run_variants_pipeline(**arguments: Any) -> dict[str, Any]:
    """`build_variants`, for callers that need only the verified menu."""
    return build_variants(**arguments).menu


def build_variants(
    *,
    source_uri: str,
    data_uri: str | None,
    store_root: Path,
    namespace: str,
    name: str,
    variants: list[str],
    accuracy_budget: float,
    menu_version: int,
    signing_key_path: Path,
    pipeline_root: Path,
    cache_dir: Path | None = None,
    kfp_host: str | None = None,
    data_key_path: Path | None = None,
    recipients: list[str] | None = None,
    pre_uri: str | None = None,
    post_uri: str | None = None,
    licensee: str = "",
    watermark_key_path: Path | None = None,
    split_parts: bool = False,
    tuning: Tuning | None = None,
) -> VariantsBuild:
    """Build, score, sign and publish the variants of `source_uri`; return the verified menu and its run.

    `pre_uri`/`post_uri`: WebAssembly pre/post modules every variant runs with (the source's URI schemes).
    With `licensee` (and the owner key at `watermark_key_path`), the variants are built from that licensee's
    watermarked copy of the source and published as the licensee's menu (`tinymlops.layout.licensee_prefix`).
    `split_parts`: publish each exact split point's head and tail (not with a data key).
    `tuning`: the MetaSchedule budget of TVM host variants (the EdgeModel's variants.tuning).
    """
    from tinymlops.variants import spec_for

    for variant_id in variants:
        spec_for(variant_id)  # SpecError naming an unknown id before any task starts
    key = _signing_key(signing_key_path)
    arguments: dict[str, Any] = {
        "source_uri": source_uri,
        "data_uri": data_uri or "",
        "store_root": str(store_root.resolve()),
        "namespace": namespace,
        "name": name,
        "variants": list(variants),
        "accuracy_budget": float(accuracy_budget),
        "menu_version": int(menu_version),
        "signing_key_path": str(signing_key_path.resolve()),
        "cache_dir": str(cache_dir.resolve()) if cache_dir else "",
        "data_key_path": str(data_key_path.resolve()) if data_key_path else "",
        "recipients": list(recipients or []),
        "pre_uri": pre_uri or "",
        "post_uri": post_uri or "",
        "licensee": licensee,
        "watermark_key_path": str(watermark_key_path.resolve()) if watermark_key_path else "",
        "split_parts": bool(split_parts),
        "tuning_trials": tuning.trials if tuning else 0,
        "tuning_time_budget_s": tuning.time_budget_s if tuning else 0.0,
    }
    if licensee and not watermark_key_path:
        raise errors.SpecError(f"licensee {licensee}: a watermarked menu needs the owner key")
    if kfp_host:
        run = _run_remote(kfp_host, arguments)
        menu_sha256 = ""  # a remote run's output parameter is not in the run object: the menu is checked below
    else:
        _precheck(source_uri, data_uri, store_root, {"pre": pre_uri or "", "post": post_uri or ""})
        menu_sha256, run = _run_local(arguments, pipeline_root)
    menu = _read_menu(DirectoryStore(store_root), menu_prefix(namespace, name, licensee), key, menu_sha256)
    _check_published(menu, arguments, run)
    return VariantsBuild(menu, run)


def _signing_key(path: Path) -> Any:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise errors.SignatureError(f"signing key {path}: cannot be read ({exc.strerror or exc})") from exc
    return load_private_key(pem, source=str(path))


def _precheck(source_uri: str, data_uri: str | None, store_root: Path, modules: dict[str, str]) -> None:
    from tinymlops.variants import load_dataset, load_source
    from tinymlops.variants.modules import FactoryModules, fetch_modules

    model = load_source(source_uri, store_root)
    blobs = fetch_modules(modules, store_root)
    loaded = FactoryModules.load(blobs.get("pre"), blobs.get("post"))
    load_dataset(data_uri or None, model, store_root,
                 preprocess=loaded.preprocess if loaded is not None and "pre" in blobs else None)


def _subprocess_pythonpath() -> None:
    """Let task subprocesses import tinymlops and tinymlops_pipelines even when not pip-installed
    (tests run from the source tree); kfp.local passes this process's environment on."""
    import tinymlops
    import tinymlops_pipelines

    needed = [str(Path(pkg.__file__).resolve().parent.parent) for pkg in (tinymlops, tinymlops_pipelines)
              if pkg.__file__]
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    missing = [p for p in dict.fromkeys(needed) if p not in current]
    if missing:
        os.environ["PYTHONPATH"] = os.pathsep.join([*missing, *current])


def _run_local(arguments: dict[str, Any], pipeline_root: Path) -> tuple[str, PipelineRun]:
    """Run through kfp.local; return the digest the last task returned and the run (named after the directory
    kfp.local made for it under `pipeline_root`)."""
    from kfp import local

    from tinymlops_pipelines.pipeline import PIPELINE_NAME, variants_pipeline

    _subprocess_pythonpath()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    earlier = {path.name for path in pipeline_root.iterdir()}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    output = io.StringIO()
    # kfp.local indents task logs by swapping builtins.print; its ParallelFor threads save and
    # restore it concurrently, which can leave the indenting print installed for good.
    original_print = builtins.print
    try:
        # kfp.local prints task logs and its own progress on stdout; keep them out of the
        # caller's stdout (the operator's, a CLI's) and in our log instead.
        with contextlib.redirect_stdout(output), warnings.catch_warnings():
            # Our image is not named *python*; kfp.local warns about that on every task.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
            # Display names are for the KFP UI; kfp.local says so once per task.
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            task = variants_pipeline(**arguments)
    except Exception as exc:
        raise _task_error(output.getvalue(), arguments, exc) from exc
    finally:
        builtins.print = original_print
        log.debug("kfp.local output:\n%s", output.getvalue())
        made = sorted(path.name for path in pipeline_root.iterdir()
                      if path.name not in earlier and path.name.startswith(PIPELINE_NAME))
        _prune_runs(pipeline_root)
    digest = task.output
    if not isinstance(digest, str) or len(digest) != 64:
        raise PipelineRunError(f"variants pipeline for {arguments['source_uri']} returned {digest!r}, not a digest")
    # kfp.local names the run's directory "<pipeline name>-<timestamp>", as a KFP backend names its runs by id.
    return digest, PipelineRun(made[-1] if made else PIPELINE_NAME)


def _task_error(output: str, arguments: dict[str, Any], cause: BaseException) -> errors.TinyMLOpsError:
    reported = parse_reported_error(output)
    if reported:
        kind, message = reported
        cls = getattr(errors, kind, None)
        if isinstance(cls, type) and issubclass(cls, errors.TinyMLOpsError):
            return cls(message)
        return PipelineRunError(f"{kind}: {message}")
    tail = "\n".join(line for line in output.strip().splitlines()[-OUTPUT_TAIL_LINES:])
    return PipelineRunError(
        f"variants pipeline for {arguments['source_uri']} failed ({cause}); last output:\n{tail}"
    )


def _prune_runs(pipeline_root: Path) -> None:
    """Task outputs are copies of what the store holds; keep only the newest few runs for debugging."""
    runs = sorted((p for p in pipeline_root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime)
    for old in runs[:-KEEP_LOCAL_RUNS]:
        shutil.rmtree(old, ignore_errors=True)


def _run_remote(host: str, arguments: dict[str, Any]) -> PipelineRun:
    import kfp

    try:
        client = kfp.Client(host=host)
        run = client.create_run_from_pipeline_package(
            str(COMPILED),
            arguments=arguments,
            run_name=f"{arguments['namespace']}-{arguments['name']}-v{arguments['menu_version']}",
            experiment_name="tinymlops-variants",
        )
        result = client.wait_for_run_completion(run.run_id, timeout=REMOTE_TIMEOUT_SECONDS)
    except (OSError, TimeoutError) as exc:
        raise errors.DependencyNotReadyError(f"Kubeflow Pipelines at {host}: {exc}") from exc
    except Exception as exc:  # kfp_server_api.ApiException and friends
        raise PipelineRunError(f"Kubeflow Pipelines at {host}: {exc}") from exc
    state = str(getattr(result, "state", ""))
    if state != "SUCCEEDED":
        detail = getattr(result, "error", None)
        raise PipelineRunError(
            f"KFP run {run.run_id} for {arguments['source_uri']} ended {state or 'in an unknown state'}"
            + (f": {detail}" if detail else "")
        )
    return PipelineRun(run.run_id, run_url(host, run.run_id))


def run_url(host: str, run_id: str) -> str:
    """The run's page in the KFP UI served at `host` (the address kfp.Client was given, as kfp itself links)."""
    base = host.rstrip("/") if host.startswith(("http://", "https://")) else f"http://{host.rstrip('/')}"
    return f"{base}/#/runs/details/{run_id}"


def _read_menu(store: ArtifactStore, prefix: str, key: Any, expected_sha256: str) -> dict[str, Any]:
    path = menu_key(prefix)
    try:
        payload = store.get(path)
        signature = store.get(signature_key(path))
    except FileNotFoundError as exc:
        raise PipelineRunError(f"pipeline succeeded but {path} is not in the store") from exc
    if expected_sha256 and not digest_matches(payload, expected_sha256):
        raise PipelineRunError(f"{path} changed after the pipeline published it (another build?)")
    return load_verified_menu(payload, signature, key.public_key())


def _check_published(menu: dict[str, Any], arguments: dict[str, Any], run: PipelineRun) -> None:
    """The menu in the store is the one this run published: the model, version and source asked for.  A remote
    run returns no digest to compare, and another build of the same model could have published since."""
    found = (dict(menu.get("model") or {}), menu.get("version"), (menu.get("base") or {}).get("source"))
    asked = ({"namespace": arguments["namespace"], "name": arguments["name"]}, arguments["menu_version"],
             arguments["source_uri"])
    if found != asked:
        raise PipelineRunError(
            f"run {run.id} succeeded but the menu in the store is not the one it published: it holds "
            f"{found[0].get('namespace')}/{found[0].get('name')} v{found[1]} from {found[2]}, not "
            f"{arguments['namespace']}/{arguments['name']} v{arguments['menu_version']} from {arguments['source_uri']}")


if __name__ == "__main__":  # pragma: no cover - manual runs
    print("use tinymlops variants build, or call run_variants_pipeline()", file=sys.stderr)
