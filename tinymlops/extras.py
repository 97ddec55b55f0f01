"""The optional parts of tinymlops and the message a missing one gives.

The core install is the device agent's (see pyproject.toml). Everything else is an extra: code that needs
one checks for it where its package is entered, and the CLI turns a missing module into one line naming
the extra to install, so nobody is left with a bare `No module named 'kopf'`.
"""

from __future__ import annotations

import importlib.util

from tinymlops.errors import MissingExtraError

# The import names each extra's own requirements provide, and the extras it pulls in with them
# (tests/unit/test_packaging.py holds both against pyproject.toml). `agent` is the core install and adds nothing.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "agent": (),
    "privacy": ("opendp",),
    "protection": ("scipy",),
    "gateway": ("prometheus_client",),
    "pipelines": ("kfp", "onnx", "yaml", "rich", "sklearn", "skl2onnx"),
    "operator": ("kopf", "kubernetes", "prometheus_client", "yaml"),
    "stack": ("celpy", "jsonpatch", "kmock", "yaml", "rich"),
    "tvm": ("tvm", "tvm_ffi"),
    "tune": ("xgboost", "psutil"),
    "plot": ("matplotlib",),
    "licensing": ("pyseto", "pymerkle"),
    "wasm": ("wasmtime",),
    "watermark": ("torch", "onnx2torch"),
    "federated": ("flwr",),
    "mcu": ("emx_onnx_cgen",),
    "all": (),
}
EXTRA_INCLUDES: dict[str, tuple[str, ...]] = {
    "pipelines": ("wasm",),
    "operator": ("licensing", "pipelines"),
    "tune": ("tvm",),
    "stack": ("gateway", "licensing", "operator", "pipelines", "privacy"),
    "watermark": ("pipelines", "protection"),
    "federated": ("watermark", "privacy"),
    "all": ("agent", "federated", "gateway", "licensing", "operator", "pipelines", "plot", "privacy", "protection",
            "stack", "tune", "tvm", "wasm", "watermark", "mcu"),
}

# The extra each CLI command needs beyond the core: what its help and errors point users to.
COMMAND_EXTRAS: dict[str, str] = {
    "demo": "stack",
    "cluster": "stack",
    "devices": "stack",
    "operator": "operator",
    "gateway": "gateway",
    "variants": "pipelines",
    "keys": "pipelines",  # the publisher's signing keys; a device's own key (`keys device`) needs only the core
    "agent": "agent",
    "drift": "agent",  # scores need only the core; --plot names the `plot` extra when matplotlib is missing
    "license": "licensing",
    "mcu": "tvm",  # the firmware build compiles against TVM's C headers
    "watermark": "watermark",
}


def install_hint(extra: str) -> str:
    return f"pip install 'tinymlops[{extra}]'"


def missing_extra(extra: str, module: str, needed_by: str) -> MissingExtraError:
    return MissingExtraError(
        f"{needed_by} needs {module}, which is not installed: it comes with the {extra!r} extra "
        f"({install_hint(extra)})", name=module)


def modules_of(extra: str) -> tuple[str, ...]:
    """The import names an install of tinymlops[extra] provides beyond the core."""
    names = list(EXTRA_MODULES[extra])
    for included in EXTRA_INCLUDES.get(extra, ()):
        names += modules_of(included)
    return tuple(dict.fromkeys(names))


def extra_providing(module: str, preferred: str | None = None) -> str | None:
    """The extra to install for `module`: `preferred` (the one a command needs) if it brings it, else the
    first that does; None for a module no extra brings (a bug or a broken install, not a missing extra)."""
    candidates = [preferred] if preferred else []
    candidates += [extra for extra in EXTRA_MODULES if extra != "all"]
    return next((extra for extra in candidates if module in modules_of(extra)), None)


def require_extra(extra: str, needed_by: str, *modules: str) -> None:
    """Raise MissingExtraError unless `modules` (default: all of the extra's) can be imported.

    Looked up, not imported, so the check costs nothing when they are there."""
    for module in modules or modules_of(extra):
        if importlib.util.find_spec(module) is None:
            raise missing_extra(extra, module, needed_by)
