"""Reading a command's `--input X.npz`: the array `x`, float32 and batch first, or an error naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


def read_inputs(path: Path, *, param_hint: str = "--input") -> NDArray[np.float32]:
    """The `x` array of the .npz file at `path`; click.BadParameter naming what is wrong (not an .npz file, no
    `x`, not float32, or no batch dimension). Pickled arrays are never loaded."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise click.BadParameter(f"{path}: has no array `x` (found: {', '.join(npz.files) or 'none'})",
                                         param_hint=param_hint)
            x = npz["x"]
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: not a readable .npz file ({exc})", param_hint=param_hint) from exc
    if x.dtype != np.float32 or x.ndim < 2:
        raise click.BadParameter(f"{path}: x is {x.dtype} {x.shape}; the model takes float32, batch first",
                                 param_hint=param_hint)
    return x  # type: ignore[no-any-return]
