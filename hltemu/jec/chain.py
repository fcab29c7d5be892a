"""Chains of levels (:class:`JecChain`), configuration entries and the kernel tables.

:func:`load_level` and :func:`load_chain` resolve the ``[jec] levels`` entries (text files,
``FILE.json#NAME``, ``builtin:NAME``); :func:`build_tables` flattens levels into the arrays
:mod:`hltemu.kernels.jec` reads.  Nothing here imports Numba.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hltemu.config import BUILTIN_PREFIX, shipped_file
from hltemu.jec import opcodes as K
from hltemu.jec.cms_text import JEC_VARIABLES, JecLevel, _length, read_jec_text
from hltemu.jec.correctionlib_json import read_correctionlib
from hltemu.jec.errors import JecError

#: What a shipped correction file's name ends in.
_CORRECTION_SUFFIXES = (".txt", ".json", ".gz")


def builtin_path(name: str) -> Path:
    """A correction file shipped in ``hltemu/models``."""
    return _entry_path(BUILTIN_PREFIX + name)


def _entry_path(spec: str) -> Path:
    """The file of an entry without its ``#SECTION`` (a built-in one checked to exist)."""
    return shipped_file(spec, "models", "correction", _CORRECTION_SUFFIXES, JecError)


def load_level(entry: str) -> list[JecLevel]:
    """The level(s) one configuration entry names.

    ``PATH`` (CMS text, plain or gzipped), ``PATH#SECTION`` (a section of a multi-section text
    file), ``PATH.json#NAME`` (a correction, or a compound correction's levels, from
    correctionlib JSON; ``#NAME`` may be left out when the file holds one correction), or
    ``builtin:NAME`` for a file in ``hltemu/models``.
    """
    spec, _, name = entry.partition("#")
    path = _entry_path(spec)
    if _is_json(path):
        return read_correctionlib(path, name or None)
    return [read_jec_text(path, name or None)]


def _is_json(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    return bool(suffixes) and (suffixes[-1] == ".json" or suffixes[-2:] == [".json", ".gz"])


@functools.lru_cache(maxsize=32)
def _load_chain_cached(entries: tuple[str, ...], stamps: tuple[float, ...]) -> JecChain:
    levels = [lv for e in entries for lv in load_level(e)]
    return JecChain(tuple(levels))


def load_chain(entries: Sequence[str]) -> JecChain:
    """The chain of levels the entries name, in order (cached until a file changes)."""
    entries = tuple(entries)
    stamps = []
    for e in entries:
        spec = e.partition("#")[0]
        p = _entry_path(spec)
        stamps.append(p.stat().st_mtime if p.exists() else -1.0)
    return _load_chain_cached(entries, tuple(stamps))


class JecTables(NamedTuple):
    """The flat arrays :mod:`hltemu.kernels.jec` reads (layout in its docstring)."""

    levels: Any
    bin_lo: Any
    bin_hi: Any
    var_lo: Any
    var_hi: Any
    rows: Any
    params: Any
    edges: Any
    cand_offsets: Any
    cand_rows: Any
    programs: Any
    code_op: Any
    code_arg: Any


class JecChain:
    """Levels applied in order, each to the pT and energy the previous one left.

    ``levels`` may be empty (every factor is then 1).
    """

    def __init__(self, levels: Sequence[JecLevel]) -> None:
        self.levels = tuple(levels)
        self._tables: JecTables | None = None
        self._device_tables: dict[str, JecTables] = {}

    def __len__(self) -> int:
        return len(self.levels)

    @property
    def names(self) -> list[str]:
        """Level labels, made unique (``L2Relative``, ``L2Relative_2``) for column names."""
        seen: dict[str, int] = {}
        out = []
        for lv in self.levels:
            seen[lv.name] = seen.get(lv.name, 0) + 1
            out.append(lv.name if seen[lv.name] == 1 else f"{lv.name}_{seen[lv.name]}")
        return out

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for lv in self.levels for v in lv.variables))

    def correct_reference(self, values: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
        """NumPy reference: corrected pT, corrected energy and the factors per level.

        ``values`` maps CMS variable names to arrays ``(n_jets,)``; ``JetPt`` (and ``JetE`` when
        a level reads it) are the raw values.  Returns ``pt`` [GeV], ``energy`` [GeV] (NaN when
        ``JetE`` is absent) and ``factors`` of shape ``(n_jets, n_levels)``.
        """
        n = _length(values, ("JetPt",))
        vals = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        vals.setdefault("JetE", np.full(n, np.nan))
        factors = np.ones((n, len(self.levels)), dtype=np.float64)
        for i, lv in enumerate(self.levels):
            f = lv.evaluate(vals)
            factors[:, i] = f
            vals["JetPt"] = vals["JetPt"] * f
            vals["JetE"] = vals["JetE"] * f
        return vals["JetPt"], vals["JetE"], factors

    def tables(self) -> JecTables:
        """The kernel tables (NumPy arrays), built once."""
        if self._tables is None:
            self._tables = build_tables(self.levels)
        return self._tables

    def device_tables(self, backend: Any) -> JecTables:
        """The kernel tables on ``backend`` (copied once per backend)."""
        key = f"{backend.name}:{backend.device}"
        if key not in self._device_tables:
            self._device_tables[key] = JecTables(*(backend.to_device(a) for a in self.tables()))
        return self._device_tables[key]


def jet_values(jets: Any, rho: Any = None) -> dict[str, np.ndarray]:
    """CMS-named float64 NumPy arrays of a host jets collection (columns ``pt`` [GeV], ``eta``,
    ``phi`` [rad], ``area``), with ``Rho`` [GeV per unit area] per jet from an event-level
    ``rho`` collection when given: the ``values`` of :meth:`JecChain.correct_reference`."""
    values = {var: np.asarray(jets[col], dtype=np.float64)
              for var, col in (("JetPt", "pt"), ("JetEta", "eta"), ("JetPhi", "phi"),
                               ("JetA", "area"))}
    if rho is not None:
        values["Rho"] = np.asarray(rho["rho"], dtype=np.float64)[np.asarray(jets.event_index())]
    return values


def values_matrix(values: Mapping[str, Any], n: int, xp: Any = np) -> Any:
    """The kernels' ``values`` array ``(n, N_VARS)`` from CMS-named columns (NaN when absent)."""
    out = xp.full((n, K.N_VARS), xp.nan, dtype=xp.float64)
    for name, col in JEC_VARIABLES.items():
        if name in values:
            out[:, col] = values[name]
    return out


def build_tables(levels: Sequence[JecLevel]) -> JecTables:
    """Flatten levels into the arrays of :mod:`hltemu.kernels.jec`, with the bin search index."""
    n_rows = sum(lv.n_rows for lv in levels)
    lv_tab = np.zeros((len(levels), K.N_LEVEL_FIELDS), dtype=np.int64)
    bin_lo = np.zeros((n_rows, K.MAX_BIN_VARS))
    bin_hi = np.zeros((n_rows, K.MAX_BIN_VARS))
    var_lo = np.full((n_rows, K.MAX_PAR_VARS), -np.inf)
    var_hi = np.full((n_rows, K.MAX_PAR_VARS), np.inf)
    rows = np.zeros((n_rows, K.N_ROW_FIELDS), dtype=np.int64)
    params: list[np.ndarray] = []
    edges: list[np.ndarray] = []
    cand_offsets = [0]
    cand_rows: list[int] = []
    programs: list[tuple[int, int]] = []
    code_op: list[np.ndarray] = []
    code_arg: list[np.ndarray] = []
    n_code = n_par = n_edge = n_ivl = row0 = 0
    for li, lv in enumerate(levels):
        nb, nv = len(lv.bin_vars), len(lv.par_vars)
        prog0 = len(programs)
        for f in lv.formulas:
            programs.append((n_code, n_code + f.code_op.shape[0]))
            code_op.append(f.code_op)
            code_arg.append(f.code_arg)
            n_code += f.code_op.shape[0]
        sl = slice(row0, row0 + lv.n_rows)
        bin_lo[sl, :nb] = lv.bin_lo
        bin_hi[sl, :nb] = lv.bin_hi
        var_lo[sl, :nv] = lv.var_lo
        var_hi[sl, :nv] = lv.var_hi
        rows[sl, K.R_PROG] = prog0 + lv.row_formula
        for r in range(lv.n_rows):
            p = lv.params[r]
            p = p[: lv.formulas[lv.row_formula[r]].n_params]
            rows[row0 + r, K.R_PAR0] = n_par
            params.append(p)
            n_par += p.shape[0]
        # search index on the first binning variable
        if nb:
            e = np.unique(np.concatenate([lv.bin_lo[:, 0], lv.bin_hi[:, 0]]))
        else:
            e = np.array([-np.inf, np.inf])
        for k in range(e.shape[0] - 1):
            if nb:
                cover = np.flatnonzero((lv.bin_lo[:, 0] <= e[k]) & (lv.bin_hi[:, 0] >= e[k + 1]))
            else:
                cover = np.arange(lv.n_rows)
            cand_rows.extend((row0 + cover).tolist())
            cand_offsets.append(len(cand_rows))
        lv_tab[li, K.L_NBIN] = nb
        lv_tab[li, K.L_NPAR] = nv
        lv_tab[li, K.L_ROW0] = row0
        lv_tab[li, K.L_ROW1] = row0 + lv.n_rows
        lv_tab[li, K.L_EDGE0] = n_edge
        lv_tab[li, K.L_EDGE1] = n_edge + e.shape[0]
        lv_tab[li, K.L_IVL0] = n_ivl
        for b, name in enumerate(lv.bin_vars):
            lv_tab[li, K.L_BINVAR + b] = JEC_VARIABLES[name]
        for v, name in enumerate(lv.par_vars):
            lv_tab[li, K.L_PARVAR + v] = JEC_VARIABLES[name]
        edges.append(e)
        n_edge += e.shape[0]
        n_ivl += e.shape[0] - 1
        row0 += lv.n_rows

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return JecTables(
        levels=lv_tab, bin_lo=bin_lo, bin_hi=bin_hi, var_lo=var_lo, var_hi=var_hi, rows=rows,
        params=cat(params, np.float64), edges=cat(edges, np.float64),
        cand_offsets=np.asarray(cand_offsets, dtype=np.int64),
        cand_rows=np.asarray(cand_rows, dtype=np.int64),
        programs=np.asarray(programs, dtype=np.int64).reshape(-1, 2),
        code_op=cat(code_op, np.int64), code_arg=cat(code_arg, np.float64),
    )
