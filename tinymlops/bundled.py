"""Where the CRDs and the example manifests are, installed or in a checkout.

crds/ and examples/ live at the top of the repository (crds/ is the one source of the CRDs). A wheel carries
copies as tinymlops/_data/ (setup.py makes them at build time); a source checkout or an editable install has
no copies and reads the originals. Every caller asks here, so both cases behave the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

PACKAGE = Path(__file__).resolve().parent
Bundled = Literal["crds", "examples"]


def bundled_dir(name: Bundled) -> Path:
    """The directory `name` as this installation has it: the wheel's copy, else the checkout's original."""
    installed = PACKAGE / "_data" / name
    if installed.is_dir():
        return installed
    # A checkout: the package sits beside pyproject.toml. Without that test, a stray site-packages/examples
    # left by some other distribution would be taken for ours.
    checkout = PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    raise FileNotFoundError(
        f"{name}/ is neither in the installed package ({installed}) nor in a source checkout ({checkout / name}): "
        "reinstall tinymlops from a wheel built by its setup.py, or run from the repository")


def crd_dir() -> Path:
    return bundled_dir("crds")


def examples_dir() -> Path:
    return bundled_dir("examples")
