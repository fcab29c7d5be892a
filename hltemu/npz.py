"""Reading the NumPy ``.npz`` weight files of hltemu's models (the doublet CNN, the jet
regression): every array, or one error naming the file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def read_arrays(path: str | Path, error: type[Exception]) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path`` (no pickled objects), or ``error`` naming the
    file and why it cannot be read (not a zip, truncated, an array that cannot be loaded)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise error(f"{path}: cannot read the weights ({type(exc).__name__}: {exc})"
                    ) from None
