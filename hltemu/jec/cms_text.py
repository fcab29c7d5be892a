"""Correction levels (:class:`JecLevel`, with its NumPy evaluation) and the CMS JEC text format.

:func:`read_jec_text` and :func:`parse_jec_text` read the ``{N binvars... M parvars... formula
Correction Level}`` files, plain or gzipped, with errors naming the file, line and token.
"""

from __future__ import annotations

import functools
import gzip
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.jec import opcodes as K
from hltemu.jec.errors import JecError, JecFormatError
from hltemu.jec.formula import FORMULA_VARIABLES, Formula, FormulaError

#: CMS variable names the corrections may use, and their column in the kernels' ``values``.
JEC_VARIABLES: dict[str, int] = {
    "JetEta": K.VAR_ETA,
    "JetPt": K.VAR_PT,
    "JetPhi": K.VAR_PHI,
    "JetE": K.VAR_E,
    "JetA": K.VAR_AREA,
    "Rho": K.VAR_RHO,
}

#: Level names recognised in CMS file names (the header's name is used otherwise).  The
#: L2L3Residual files of some eras say ``L2Relative`` in their header, hence the file name first.
KNOWN_LEVELS: tuple[str, ...] = (
    "L1FastJet", "L1RC", "L1Offset", "L2Relative", "L3Absolute", "L2Residual", "L3Residual",
    "L2L3Residual", "L4EMF", "L5Flavor", "L6SLB", "L7Parton",
)


@dataclass(frozen=True, eq=False)
class JecLevel:
    """One correction level: rows of bins, clamp ranges and formula parameters.

    Attributes
    ----------
    name:
        Level label (``L1FastJet``, ``L2Relative``, ...; from the file name when it says).
    source:
        Where it was read from (file, ``file#correction`` for JSON).
    bin_vars, par_vars:
        CMS names of the binning variables and of the formula variables x, y, z, t.
    formulas:
        The formulas rows refer to (one for a CMS text file).
    bin_lo, bin_hi:
        ``(n_rows, len(bin_vars))``: the row covers ``lo <= v < hi`` in every binning variable.
    var_lo, var_hi:
        ``(n_rows, len(par_vars))``: clamp ranges of the formula variables (``-inf, inf`` none).
    params:
        ``(n_rows, max parameters)`` formula parameters, NaN-padded.
    row_formula:
        ``(n_rows,)`` index into ``formulas``.
    header_level:
        The level name written in the file's header (or the correction's name for JSON).
    """

    name: str
    source: str
    bin_vars: tuple[str, ...]
    par_vars: tuple[str, ...]
    formulas: tuple[Formula, ...]
    bin_lo: np.ndarray
    bin_hi: np.ndarray
    var_lo: np.ndarray
    var_hi: np.ndarray
    params: np.ndarray
    row_formula: np.ndarray
    header_level: str = ""

    @property
    def n_rows(self) -> int:
        return int(self.bin_lo.shape[0])

    @property
    def variables(self) -> tuple[str, ...]:
        """Every CMS variable the level reads (binning first), without repetition."""
        return tuple(dict.fromkeys((*self.bin_vars, *self.par_vars)))

    def find_rows(self, values: Mapping[str, Any]) -> np.ndarray:
        """Row index per point (first row containing it, in file order), -1 when none.

        ``values`` maps each binning variable's CMS name to an array of shape ``(n,)``.
        """
        n = _length(values, self.variables)
        row = np.full(n, -1, dtype=np.int64)
        bins = [np.asarray(values[name], dtype=np.float64) for name in self.bin_vars]
        for r in range(self.n_rows):
            take = row < 0
            for b, v in enumerate(bins):
                take &= (v >= self.bin_lo[r, b]) & (v < self.bin_hi[r, b])
            row[take] = r
        return row

    def evaluate(self, values: Mapping[str, Any]) -> np.ndarray:
        """The level's factor per point (NumPy reference); 1 where no row contains the point.

        ``values`` maps every name in :attr:`variables` to an array of shape ``(n,)``.
        """
        row = self.find_rows(values)
        factor = np.ones(row.shape[0], dtype=np.float64)
        for f_index, formula in enumerate(self.formulas):
            sel = np.flatnonzero((row >= 0) & (self.row_formula[np.maximum(row, 0)] == f_index))
            if sel.size == 0:
                continue
            r = row[sel]
            xs = []
            for k, name in enumerate(self.par_vars):
                v = np.asarray(values[name], dtype=np.float64)[sel]
                lo, hi = self.var_lo[r, k], self.var_hi[r, k]
                xs.append(np.where(v < lo, lo, np.where(v > hi, hi, v)))  # CMS clamping
            factor[sel] = formula.evaluate(self.params[r], xs)
        return factor


def _length(values: Mapping[str, Any], names: Sequence[str]) -> int:
    missing = [n for n in names if n not in values]
    if missing:
        raise JecError(f"values for {missing} are needed; got {sorted(values)}")
    lengths = {np.asarray(values[n]).shape[0] for n in names}
    if len(lengths) > 1:
        raise JecError(f"variables have different lengths {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def level_label(path_or_name: str, header_level: str) -> str:
    """The level a CMS file holds: a known level name in its file name, else its header's."""
    stem = Path(path_or_name).name
    for part in re.split(r"[_.#]", stem):
        if part in KNOWN_LEVELS:
            return part
    return header_level


def _open_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise JecError(f"correction file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise JecError(f"correction file {str(path)!r} is a directory") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise JecError(f"{path}: not a valid gzip file ({exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JecFormatError(str(path), raw[: exc.start].count(b"\n") + 1,
                             repr(raw[exc.start:exc.start + 1]), "not a text file") from None


def read_jec_text(path: str | Path, section: str | None = None) -> JecLevel:
    """Read a CMS JEC text file (``.txt`` or gzipped); see :func:`parse_jec_text`."""
    path = Path(path)
    return parse_jec_text(_open_text(path), str(path), section)


def parse_jec_text(text: str, source: str = "<text>", section: str | None = None) -> JecLevel:
    """Parse the CMS JEC text format.

    The first line (after comments ``#`` and, in multi-section files, the ``[section]`` line)
    is the header ``{N binvars... M parvars... formula Correction Level}``; each further line is
    a row: ``2N`` bin bounds, a count ``K``, then ``K`` numbers: ``2M`` clamp bounds followed by
    the formula's parameters.  Raises :class:`JecFormatError` naming ``source``, the line and
    the token at fault.
    """
    lines = _select_section(text, source, section)
    if not lines:
        raise JecFormatError(source, 1, "", "no header line {...} found: empty file")
    header_no, header = lines[0]
    bin_vars, par_vars, formula, header_level = _parse_header(header, source, header_no)
    nb, nv = len(bin_vars), len(par_vars)
    bin_lo, bin_hi, var_lo, var_hi, params = [], [], [], [], []
    for line_no, line in lines[1:]:
        nums = _parse_row(line, source, line_no, nb, nv, formula)
        bin_lo.append(nums[0:2 * nb:2])
        bin_hi.append(nums[1:2 * nb:2])
        rest = nums[2 * nb + 1:]
        var_lo.append(rest[0:2 * nv:2])
        var_hi.append(rest[1:2 * nv:2])
        params.append(rest[2 * nv:])
    if not params:
        raise JecFormatError(source, header_no, header.split()[-1], "header but no rows")
    width = max(len(p) for p in params)
    table = np.full((len(params), max(width, 1)), np.nan)
    for i, p in enumerate(params):
        table[i, : len(p)] = p
    as2d = functools.partial(np.asarray, dtype=np.float64)
    return JecLevel(
        name=level_label(source, header_level),
        source=source,
        bin_vars=bin_vars,
        par_vars=par_vars,
        formulas=(formula,),
        bin_lo=as2d(bin_lo).reshape(len(params), nb),
        bin_hi=as2d(bin_hi).reshape(len(params), nb),
        var_lo=as2d(var_lo).reshape(len(params), nv),
        var_hi=as2d(var_hi).reshape(len(params), nv),
        params=table,
        row_formula=np.zeros(len(params), dtype=np.int64),
        header_level=header_level,
    )


def _select_section(text: str, source: str, section: str | None) -> list[tuple[int, str]]:
    """Non-empty, non-comment lines (with 1-based numbers) of the chosen section."""
    sections: dict[str | None, list[tuple[int, str]]] = {None: []}
    current: str | None = None
    for no, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("[") and s.endswith("]") and not s.startswith("[]"):
            current = s[1:-1].strip()
            sections.setdefault(current, [])
            continue
        sections.setdefault(current, []).append((no, line))
    named = [k for k in sections if k is not None]
    if section is not None:
        if section not in named:
            raise JecFormatError(source, 0, section,
                                 f"no section [{section}]; sections: {named or 'none'}")
        return sections[section]
    if named:
        if sections[None] or len(named) > 1:
            raise JecFormatError(source, 0, named[0], f"the file has sections {named}; choose "
                                 "one (FILE#SECTION in the configuration)")
        return sections[named[0]]
    return sections[None]


def _parse_header(line: str, source: str, no: int) -> tuple[tuple[str, ...], tuple[str, ...],
                                                             Formula, str]:
    s = line.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise JecFormatError(source, no, s.split()[0], "expected the header {N binvars... M "
                             "parvars... "
                             "formula Correction Level} as the first line")
    tokens = s[1:-1].split()
    last = tokens[-1] if tokens else s

    def count(i: int, what: str) -> int:
        if i >= len(tokens):
            raise JecFormatError(source, no, last, f"header ends before the {what}")
        try:
            n = int(tokens[i])
        except ValueError:
            raise JecFormatError(source, no, tokens[i], f"expected the {what}") from None
        if n < 0:
            raise JecFormatError(source, no, tokens[i], f"the {what} cannot be negative")
        return n

    def names(start: int, n: int, what: str, limit: int) -> tuple[str, ...]:
        if n > limit:
            raise JecFormatError(source, no, tokens[start - 1],
                                 f"at most {limit} {what} variables are supported")
        out = tuple(tokens[start:start + n])
        if len(out) < n:
            raise JecFormatError(source, no, last, f"header ends inside the {what} variables")
        for name in out:
            if name not in JEC_VARIABLES:
                raise JecFormatError(source, no, name, f"unsupported {what} variable; supported: "
                                     f"{', '.join(JEC_VARIABLES)}")
        return out

    nb = count(0, "number of binning variables")
    bin_vars = names(1, nb, "binning", K.MAX_BIN_VARS)
    nv = count(1 + nb, "number of formula variables")
    par_vars = names(2 + nb, nv, "formula", K.MAX_PAR_VARS)
    rest = tokens[2 + nb + nv:]
    if len(rest) != 3:
        bad = rest[3] if len(rest) > 3 else last
        raise JecFormatError(source, no, bad, "expected exactly three tokens after the "
                             f"variables (formula, Correction, level), got {len(rest)}")
    text, kind, level = rest
    if kind != "Correction":
        raise JecFormatError(source, no, kind, "only 'Correction' files are supported "
                             "('Response' files need CMS's numerical inversion)")
    try:
        formula = Formula(text)
    except FormulaError as exc:
        raise JecFormatError(source, no, exc.token, f"formula: {exc}") from None
    if formula.n_vars > nv:
        raise JecFormatError(source, no, FORMULA_VARIABLES[formula.n_vars - 1],
                             f"the formula uses variable {FORMULA_VARIABLES[formula.n_vars - 1]}"
                             f" but the header declares {nv} formula variable(s)")
    return bin_vars, par_vars, formula, level


def _parse_row(line: str, source: str, no: int, nb: int, nv: int, formula: Formula) -> list[float]:
    tokens = line.split()
    nums: list[float] = []
    for tok in tokens:
        try:
            nums.append(float(tok))
        except ValueError:
            raise JecFormatError(source, no, tok, "not a number") from None
        if math.isnan(nums[-1]):
            raise JecFormatError(source, no, tok, "NaN is not allowed")
    if len(nums) < 2 * nb + 1:
        raise JecFormatError(source, no, tokens[-1] if tokens else "",
                             f"a row needs {2 * nb} bin bounds and a count, got {len(nums)} "
                             "numbers")
    count_tok = tokens[2 * nb]
    k = nums[2 * nb]
    if k != int(k) or k < 0:
        raise JecFormatError(source, no, count_tok, "the count after the bin bounds must be a "
                             "non-negative integer")
    k = int(k)
    if len(nums) - 2 * nb - 1 != k:
        tok = tokens[2 * nb + 1 + k] if len(nums) - 2 * nb - 1 > k else count_tok
        raise JecFormatError(source, no, tok, f"the count says {k} numbers follow, the row has "
                             f"{len(nums) - 2 * nb - 1}")
    if k < 2 * nv + formula.n_params:
        raise JecFormatError(source, no, count_tok, f"{k} numbers: too few for {nv} clamp "
                             f"range(s) and the formula's {formula.n_params} parameter(s)")
    return nums
