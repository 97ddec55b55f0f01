"""`python -m tinymlops_pipelines.compile`: write the committed IR YAML (a unit test checks it is current)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

COMPILED = Path(__file__).parent / "compiled" / "variants_pipeline.yaml"


def compile_pipeline(path: Path) -> None:
    import warnings

    from kfp import compiler

    from tinymlops_pipelines.pipeline import variants_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiler.Compiler().compile(variants_pipeline, str(path))


def compiled_text() -> str:
    """The IR YAML as the current code compiles it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "variants_pipeline.yaml"
        compile_pipeline(path)
        return path.read_text()


def main() -> int:
    COMPILED.parent.mkdir(parents=True, exist_ok=True)
    compile_pipeline(COMPILED)
    print(f"wrote {COMPILED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
