"""Ships crds/ and examples/ inside the wheel, as tinymlops/_data/crds and tinymlops/_data/examples.

They stay at the repository top: crds/ is the one source of the CRDs (the Helm chart's copy is checked against
it) and examples/ is what the README applies. A wheel has no repository, so the build copies them into the
package; tinymlops/bundled.py finds the copy in an install and the originals in a checkout. Everything else
about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Source directory at the repository top -> where it lands inside the tinymlops package.
SHIPPED = {"crds": "tinymlops/_data/crds", "examples": "tinymlops/_data/examples"}


def shipped_files(source: Path) -> list[Path]:
    # Everything a user may apply or read (manifests, READMEs, Argo CD's Lua health checks); no hidden files.
    return sorted(p for p in source.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts))


class BuildPyWithManifests(build_py):
    """build_py plus the copies; an editable install skips them, since it reads the checkout in place."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            for source, target in SHIPPED.items():
                self.copy_manifests(HERE / source, Path(self.build_lib) / target)

    def copy_manifests(self, source: Path, target: Path) -> None:
        files = shipped_files(source)
        if not files:
            # A wheel without them would fail only later, at `tinymlops demo` or `cluster up`, on the user's machine.
            raise FileNotFoundError(f"{source}: no manifests to ship (the build needs crds/ and examples/)")
        # A build directory left from an earlier build may hold files deleted since.
        shutil.rmtree(target, ignore_errors=True)
        for file in files:
            destination = target / file.relative_to(source)
            self.mkpath(str(destination.parent))
            self.copy_file(str(file), str(destination))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            for source, target in SHIPPED.items():
                outputs += [str(Path(self.build_lib) / target / f.relative_to(HERE / source))
                            for f in shipped_files(HERE / source)]
        return outputs


setup(cmdclass={"build_py": BuildPyWithManifests})
