"""Pileup noise of the calorimeter cells as reconstruction uses it: the per-ring table and the
total noise.  NumPy only; no generator (the derivation of a table from Pythia minimum-bias
interactions lives in :mod:`hltemu.simulate.pileup_noise`, which re-exports these names).

Topoclustering thresholds are in units of a cell's *total* noise (as in ATLAS)::

    sigma_tot = sqrt(sigma_el**2 + mu * sigma_1**2)

with ``sigma_el`` the electronic noise of :mod:`hltemu.geometry`, ``mu`` the mean number of
pileup interactions the thresholds are tuned for, and ``sigma_1`` the pileup noise of *one*
minimum-bias interaction: the RMS (about zero) of the energy one interaction leaves in the cell
(:func:`total_noise`; why ``mu * sigma_1**2``: see :mod:`hltemu.simulate.pileup_noise`).

Table (``.npz``, :func:`save_table` / :func:`load_table`): ``sigma1``, ``sigma1_true``,
``sigma1_rel_err``, ``mean1`` (the mean energy per interaction), float64 GeV, one entry per ring
in the order ``(layer, i_eta)`` (layer after layer, ``i_eta = 0`` at ``eta = -eta_max``);
``n_eta`` (int64, rings per layer); ``layer_names``; ``provenance`` (a JSON string: seed,
interactions, sqrt(s), beam spot, seconds, hltemu and pythia8mc versions, the command).
Loading needs NumPy only.  A table is given as ``builtin:NAME`` (shipped in ``hltemu/models``,
e.g. ``builtin:pileup_noise.npz``) or a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.config import BUILTIN_PREFIX, shipped_dir, spec_path

#: Prefix of a table shipped in ``hltemu/models``.
BUILTIN = BUILTIN_PREFIX

#: Arrays of a table file: name -> (dtype kind, meaning).
TABLE_ARRAYS: dict[str, tuple[str, str]] = {
    "sigma1": ("f", "RMS of one interaction's measured energy per ring (GeV)"),
    "sigma1_true": ("f", "RMS of one interaction's true deposited energy per ring (GeV)"),
    "sigma1_rel_err": ("f", "relative statistical error of sigma1"),
    "mean1": ("f", "mean measured energy of one interaction per ring (GeV)"),
    "n_eta": ("i", "rings (eta bins) per layer"),
    "layer_names": ("U", "calorimeter layer names"),
    "provenance": ("U", "JSON: how the table was made"),
}


class PileupNoiseError(ValueError):
    """A pileup-noise table that cannot be read or does not fit the calorimeter."""


@dataclass(frozen=True)
class PileupNoiseTable:
    """Per-ring pileup noise of one minimum-bias interaction (see the module docstring).

    ``sigma1``, ``sigma1_true``, ``sigma1_rel_err``, ``mean1``: float64 ``(n_rings,)`` in ring
    order ``(layer, i_eta)``; ``n_eta``: int64 ``(n_layers,)``; ``layer_names``: tuple of str;
    ``provenance``: dict.
    """

    sigma1: np.ndarray
    sigma1_true: np.ndarray
    sigma1_rel_err: np.ndarray
    mean1: np.ndarray
    n_eta: np.ndarray
    layer_names: tuple[str, ...]
    provenance: dict

    @property
    def ring_offset(self) -> np.ndarray:
        """First ring of each layer (int64, ``n_layers + 1``)."""
        return np.concatenate([[0], np.cumsum(self.n_eta)]).astype(np.int64)

    def layer(self, index: int) -> np.ndarray:
        """``sigma1`` of the rings of layer ``index`` (GeV, ``(n_eta[index],)``)."""
        o = self.ring_offset
        return self.sigma1[o[index]:o[index + 1]]

    def cell_sigma1(self, calo: Any, source: str = "the pileup-noise table") -> np.ndarray:
        """``sigma1`` of every cell of ``calo`` (float64 GeV, ``(n_cells,)``);
        :class:`PileupNoiseError` naming ``source`` when the table's rings are not the
        calorimeter's."""
        return self.sigma1[self.cell_ring(calo, source)]

    def cell_mean1(self, calo: Any, source: str = "the pileup-noise table") -> np.ndarray:
        """``mean1`` (the mean energy one interaction leaves) of every cell of ``calo``
        (float64 GeV, ``(n_cells,)``); errors as :meth:`cell_sigma1`."""
        return self.mean1[self.cell_ring(calo, source)]

    def cell_ring(self, calo: Any, source: str = "the pileup-noise table") -> np.ndarray:
        """The table's ring of every cell of ``calo`` (int64, ``(n_cells,)``);
        :class:`PileupNoiseError` naming ``source`` when the table's rings are not the
        calorimeter's."""
        expected_names = tuple(lay.name for lay in calo.layers)
        expected = tuple(int(lay.n_eta) for lay in calo.layers)
        got = tuple(int(n) for n in self.n_eta)
        if got != expected or self.layer_names != expected_names:
            raise PileupNoiseError(
                f"{source} does not match the calorimeter: expected layers {list(expected_names)}"
                f" with {list(expected)} eta rings, got layers {list(self.layer_names)} with "
                f"{list(got)} rings")
        return self.ring_offset[np.asarray(calo.cell_layer)] + np.asarray(calo.cell_ieta)


def total_noise(sigma_el: np.ndarray, sigma1: np.ndarray, mu: float) -> np.ndarray:
    """``sqrt(sigma_el**2 + mu * sigma1**2)`` (float64 GeV), per cell; ``mu`` >= 0
    interactions.  With ``mu == 0`` this is ``sigma_el`` exactly (the square root of an exact
    square of a float32 value)."""
    el = np.asarray(sigma_el, dtype=np.float64)
    return np.sqrt(el * el + float(mu) * np.square(np.asarray(sigma1, dtype=np.float64)))


def pileup_offset(mean1: np.ndarray, mu: float) -> np.ndarray:
    """``mu * mean1`` (float64 GeV), per cell: the mean energy ``mu`` pileup interactions leave
    in each cell, which topoclustering subtracts from the cell energies before the significance
    (``[topocluster] subtract_pileup_mean``)."""
    return float(mu) * np.asarray(mean1, dtype=np.float64)


# -- files --------------------------------------------------------------------------------------
def models_dir() -> Path:
    """The folder of shipped tables and models (``hltemu/models``)."""
    return shipped_dir("models")


def table_path(spec: str | Path) -> Path:
    """The file of a table given as ``builtin:NAME`` (in ``hltemu/models``) or a path."""
    return spec_path(spec)


def save_table(path: str | Path, table: PileupNoiseTable) -> None:
    """Write ``table`` as an ``.npz`` file (compressed)."""
    np.savez_compressed(
        path, sigma1=table.sigma1, sigma1_true=table.sigma1_true,
        sigma1_rel_err=table.sigma1_rel_err, mean1=table.mean1,
        n_eta=np.asarray(table.n_eta, dtype=np.int64),
        layer_names=np.asarray(table.layer_names, dtype=str),
        provenance=np.asarray(json.dumps(table.provenance, sort_keys=True)))


def load_table(spec: str | Path) -> PileupNoiseTable:
    """Read a table (``builtin:NAME`` or a path to an ``.npz``), fully checked.

    :class:`PileupNoiseError` naming the file for a missing or unreadable file, a missing
    array, wrong dtypes or lengths, or values that are not finite and >= 0.
    """
    path = table_path(spec)
    if not path.is_file():
        hint = ""
        if str(spec).startswith(BUILTIN):
            shipped = sorted(p.name for p in models_dir().glob("*.npz"))
            hint = f"; shipped .npz files: {', '.join(shipped) or 'none'}"
        raise PileupNoiseError(f"pileup-noise table {spec!r}: no such file {path}{hint}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zipfile/pickle/value errors of a corrupt file
        raise PileupNoiseError(f"pileup-noise table {path}: cannot read it as .npz ({exc})"
                               ) from None
    missing = [k for k in TABLE_ARRAYS if k not in arrays]
    if missing:
        raise PileupNoiseError(f"pileup-noise table {path}: missing array(s) {missing}; "
                               f"has {sorted(arrays)}")
    for name, (kind, _) in TABLE_ARRAYS.items():
        if arrays[name].dtype.kind not in (kind, "u" if kind == "i" else kind):
            raise PileupNoiseError(f"pileup-noise table {path}: array {name!r} has dtype "
                                   f"{arrays[name].dtype}, expected kind {kind!r}")
    n_eta = arrays["n_eta"].astype(np.int64)
    names = tuple(str(s) for s in arrays["layer_names"].reshape(-1))
    if n_eta.ndim != 1 or np.any(n_eta <= 0) or len(names) != n_eta.shape[0]:
        raise PileupNoiseError(f"pileup-noise table {path}: n_eta must be one count > 0 per "
                               f"layer name, got n_eta {n_eta.tolist()} and {len(names)} names")
    n_rings = int(n_eta.sum())
    values = {}
    for name in ("sigma1", "sigma1_true", "sigma1_rel_err", "mean1"):
        a = arrays[name].astype(np.float64)
        if a.shape != (n_rings,):
            raise PileupNoiseError(f"pileup-noise table {path}: array {name!r} has shape "
                                   f"{a.shape}, expected ({n_rings},) (sum of n_eta)")
        if not np.all(np.isfinite(a) & (a >= 0)):
            bad = int(np.argmax(~(np.isfinite(a) & (a >= 0))))
            raise PileupNoiseError(f"pileup-noise table {path}: array {name!r} has the value "
                                   f"{a[bad]} at ring {bad}; values must be finite and >= 0")
        values[name] = a
    try:
        provenance = json.loads(str(arrays["provenance"]))
    except ValueError as exc:
        raise PileupNoiseError(f"pileup-noise table {path}: provenance is not JSON ({exc})"
                               ) from None
    return PileupNoiseTable(n_eta=n_eta, layer_names=names, provenance=provenance, **values)
