"""correctionlib JSON (schema v2), written and read without importing correctionlib.

:func:`level_to_correctionlib` and :func:`write_correctionlib` turn levels into nested
``binning`` nodes with ``formularef`` leaves; :func:`read_correctionlib` reads corrections and
compound corrections back into :class:`~hltemu.jec.cms_text.JecLevel` objects.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hltemu.jec import opcodes as K
from hltemu.jec.cms_text import JEC_VARIABLES, JecLevel, _open_text, level_label
from hltemu.jec.errors import JecError, JecFormatError
from hltemu.jec.formula import Formula, FormulaError, correctionlib_expression

_OUTPUT = {"name": "correction", "type": "real",
           "description": "multiplicative jet energy correction factor"}
_INPUT_DOC = {
    "JetEta": "jet pseudorapidity", "JetPt": "jet transverse momentum [GeV]",
    "JetPhi": "jet azimuth [rad]", "JetE": "jet energy [GeV]", "JetA": "jet catchment area",
    "Rho": "median pT density of the event [GeV per unit area]",
}


def correction_name(level: JecLevel) -> str:
    """A correction name for a level: its file name without directory and extensions (the
    correction's own name for a level read from JSON)."""
    spec, _, inner = level.source.partition("#")
    if inner:
        return inner
    name = Path(spec).name
    for ext in (".gz", ".txt", ".jec", ".json"):
        name = name[: -len(ext)] if name.endswith(ext) else name
    return name or level.name


def level_to_correctionlib(level: JecLevel, name: str | None = None) -> dict[str, Any]:
    """One level as a correctionlib ``Correction`` (a plain dict in the schema v2 layout).

    Nested ``binning`` nodes over the binning variables (in order) lead to ``formularef``
    leaves; the generic formula clamps its variables with ``min(max(v,[2k]),[2k+1])`` so that
    each leaf's parameters are the CMS row as written.  Outside every row (and in gaps between
    rows) the content is 1.0, as CMS returns; overlapping rows keep CMS's first match.
    """
    nv = len(level.par_vars)
    # A level read from JSON has its clamps inside the formula already (ranges +-inf here).
    clamp = bool(np.isfinite(level.var_lo).any() or np.isfinite(level.var_hi).any())
    formulas = []
    for f in level.formulas:
        if f.n_vars > nv:
            raise JecError(f"{level.source}: formula {f.text!r} reads more variables than the "
                           f"level declares ({level.par_vars})")
        formulas.append({
            "nodetype": "formula",
            "expression": correctionlib_expression(f, nv, clamp),
            "parser": "TFormula",
            "variables": list(level.par_vars),
        })

    def leaf(r: int) -> dict[str, Any]:
        f = level.formulas[level.row_formula[r]]
        pars = level.params[r, : f.n_params].tolist()
        if clamp:  # an open end is written as the largest double (JSON has no infinity)
            ranges = np.empty(2 * nv)
            ranges[0::2], ranges[1::2] = level.var_lo[r], level.var_hi[r]
            pars = np.clip(ranges, -_DBL_MAX, _DBL_MAX).tolist() + pars
        return {"nodetype": "formularef", "index": int(level.row_formula[r]),
                "parameters": [float(p) for p in pars]}

    data = _bin_tree(level, list(range(level.n_rows)), 0, leaf)
    return {
        "name": name or correction_name(level),
        "description": f"{level.name} from {Path(level.source).name} (written by hltemu)",
        "version": 1,
        "inputs": [{"name": v, "type": "real", "description": _INPUT_DOC[v]}
                   for v in level.variables],
        "output": dict(_OUTPUT),
        "generic_formulas": formulas,
        "data": data,
    }


_DBL_MAX = float(np.finfo(np.float64).max)


def _json_float(x: float) -> float | str:
    if math.isfinite(x):
        return float(x)
    return "inf" if x > 0 else "-inf"


def _bin_tree(level: JecLevel, rows: list[int], dim: int, leaf: Any) -> Any:
    """Nested binning over binning variable ``dim`` for ``rows`` (kept in file order).

    The boundaries of all rows cut the axis into elementary intervals; each interval's content
    is built from the rows covering it, in file order, so that CMS's first match survives
    overlapping rows.  Neighbouring intervals covered by the same rows are merged.
    """
    if dim == len(level.bin_vars):
        return leaf(rows[0])  # CMS takes the first row containing the jet
    lo = level.bin_lo[rows, dim]
    hi = level.bin_hi[rows, dim]
    edges_all = np.unique(np.concatenate([lo, hi]))
    pieces: list[tuple[float, float, tuple[int, ...]]] = []
    for e0, e1 in zip(edges_all[:-1], edges_all[1:], strict=True):
        cover = tuple(r for r, a, b in zip(rows, lo, hi, strict=True) if a <= e0 and b >= e1)
        if pieces and pieces[-1][2] == cover:
            pieces[-1] = (pieces[-1][0], float(e1), cover)
        else:
            pieces.append((float(e0), float(e1), cover))
    while pieces and not pieces[0][2]:
        pieces.pop(0)
    while pieces and not pieces[-1][2]:
        pieces.pop()
    if not pieces:
        return 1.0
    edges = [pieces[0][0]] + [p[1] for p in pieces]
    content = [_bin_tree(level, list(c), dim + 1, leaf) if c else 1.0 for _, _, c in pieces]
    return {"nodetype": "binning", "input": level.bin_vars[dim],
            "edges": [_json_float(e) for e in edges], "content": content, "flow": 1.0}


def write_correctionlib(path: str | Path, levels: Sequence[JecLevel],
                        compound: str | None = None, description: str = "") -> dict[str, Any]:
    """Write levels as a correctionlib CorrectionSet (JSON, gzipped when ``path`` ends .gz).

    With ``compound``, a compound correction of that name chains the levels in order, updating
    ``JetPt`` (and ``JetE``) by each factor as CMS does.  Returns the written dict.
    """
    corrections, names = [], []
    for lv in levels:
        name = correction_name(lv)
        while name in names:
            name += "_"
        names.append(name)
        corrections.append(level_to_correctionlib(lv, name))
    cset: dict[str, Any] = {
        "schema_version": 2,
        "description": description or "jet energy corrections written by hltemu",
        "corrections": corrections,
    }
    if compound:
        inputs = list(dict.fromkeys(i["name"] for c in corrections for i in c["inputs"]))
        cset["compound_corrections"] = [{
            "name": compound,
            "description": "levels applied in order, each on the pT the previous left",
            "inputs": [{"name": v, "type": "real", "description": _INPUT_DOC[v]} for v in inputs],
            "output": dict(_OUTPUT),
            "inputs_update": [v for v in ("JetPt", "JetE") if v in inputs],
            "input_op": "*",
            "output_op": "*",
            "stack": names,
        }]
    text = json.dumps(cset, indent=1)
    path = Path(path)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return cset


def read_correctionlib(path: str | Path, name: str | None = None) -> list[JecLevel]:
    """Levels from a correctionlib JSON file (schema v2; plain or gzipped).

    ``name`` is a correction (one level) or a compound correction (its stack, in order); it may
    be left out when the file holds exactly one correction.  Supported nodes: ``binning``,
    ``multibinning``, ``formula``, ``formularef`` and numbers; flows ``clamp``, a number or a
    node, and ``error`` (read as "no row": factor 1, the CMS convention, where correctionlib
    would raise).  Anything else raises :class:`JecFormatError` naming the node.
    """
    path = Path(path)
    text = _open_text(path)
    try:
        cset = json.loads(text)
    except json.JSONDecodeError as exc:
        line = text.splitlines()[exc.lineno - 1] if text else ""
        bad = line[max(exc.colno - 10, 0):exc.colno + 10]
        raise JecFormatError(str(path), exc.lineno, bad, f"not JSON: {exc.msg}") from None
    src = str(path)
    if not isinstance(cset, dict) or cset.get("schema_version") != 2:
        got = cset.get("schema_version") if isinstance(cset, dict) else type(cset).__name__
        raise JecFormatError(src, 0, str(got), "expected a correctionlib CorrectionSet with "
                             "schema_version 2")
    corrections = {c.get("name"): c for c in cset.get("corrections", [])}
    compounds = {c.get("name"): c for c in cset.get("compound_corrections") or []}
    if name is None:
        if len(corrections) == 1 and not compounds:
            name = next(iter(corrections))
        else:
            raise JecFormatError(src, 0, "", "the file holds several corrections; name one as "
                                 f"FILE#NAME: {', '.join(map(str, [*corrections, *compounds]))}")
    if name in compounds:
        stack = compounds[name].get("stack", [])
        missing = [s for s in stack if s not in corrections]
        if missing:
            raise JecFormatError(src, 0, missing[0], f"compound {name!r} names unknown corrections")
        return [_correction_to_level(corrections[s], src) for s in stack]
    if name not in corrections:
        raise JecFormatError(src, 0, name, f"no correction {name!r}; available: "
                             f"{', '.join(map(str, [*corrections, *compounds]))}")
    return [_correction_to_level(corrections[name], src)]


class _Row(NamedTuple):
    bins: dict[str, tuple[float, float]]
    formula: tuple[str, tuple[str, ...]]  # expression, variables
    params: tuple[float, ...]


def _correction_to_level(corr: dict[str, Any], src: str) -> JecLevel:
    cname = str(corr.get("name"))
    where = f"{src}#{cname}"
    inputs = [i.get("name") for i in corr.get("inputs", [])]
    for i in corr.get("inputs", []):
        if i.get("name") not in JEC_VARIABLES or i.get("type") not in ("real", "int"):
            raise JecFormatError(where, 0, str(i.get("name")), "unsupported input (type "
                                 f"{i.get('type')!r}); supported: real inputs named "
                                 f"{', '.join(JEC_VARIABLES)}")
    generic = corr.get("generic_formulas") or []
    rows: list[_Row] = []
    _collect_rows(corr.get("data"), {}, rows, generic, inputs, where, "data")
    bin_vars = tuple(dict.fromkeys(v for r in rows for v in r.bins))
    par_vars = tuple(dict.fromkeys(v for r in rows for v in r.formula[1]))
    if len(bin_vars) > K.MAX_BIN_VARS or len(par_vars) > K.MAX_PAR_VARS:
        raise JecFormatError(where, 0, str(bin_vars if len(bin_vars) > K.MAX_BIN_VARS
                                           else par_vars),
                             f"at most {K.MAX_BIN_VARS} binning and {K.MAX_PAR_VARS} formula "
                             "variables are supported")
    keys = list(dict.fromkeys(r.formula for r in rows))
    formulas = []
    for expr, variables in keys:
        try:
            f = Formula(expr)
        except FormulaError as exc:
            raise JecFormatError(where, 0, exc.token, f"formula: {exc}") from None
        if f.n_vars > len(variables):
            raise JecFormatError(where, 0, expr, f"formula reads {f.n_vars} variables, the node "
                                 f"lists {list(variables)}")
        formulas.append(f.remap_vars([par_vars.index(v) for v in variables]))
    n = len(rows)
    width = max([len(r.params) for r in rows] + [1])
    params = np.full((n, width), np.nan)
    bin_lo = np.full((n, len(bin_vars)), -np.inf)
    bin_hi = np.full((n, len(bin_vars)), np.inf)
    for i, r in enumerate(rows):
        params[i, : len(r.params)] = r.params
        for b, v in enumerate(bin_vars):
            if v in r.bins:
                bin_lo[i, b], bin_hi[i, b] = r.bins[v]
        f = formulas[keys.index(r.formula)]
        if f.n_params > len(r.params):
            raise JecFormatError(where, 0, r.formula[0], f"formula needs {f.n_params} "
                                 f"parameters, the node gives {len(r.params)}")
    return JecLevel(
        name=level_label(cname, cname), source=where, bin_vars=bin_vars, par_vars=par_vars,
        formulas=tuple(formulas), bin_lo=bin_lo, bin_hi=bin_hi,
        var_lo=np.full((n, len(par_vars)), -np.inf), var_hi=np.full((n, len(par_vars)), np.inf),
        params=params, row_formula=np.asarray([keys.index(r.formula) for r in rows], np.int64),
        header_level=cname,
    )


def _edges_of(node: dict[str, Any], where: str, at: str) -> list[float]:
    edges = node.get("edges")
    if isinstance(edges, dict):  # uniform binning {"n", "low", "high"}
        n, low, high = int(edges["n"]), float(edges["low"]), float(edges["high"])
        return [low + (high - low) * i / n for i in range(n)] + [high]
    try:
        return [float(e) for e in edges]
    except (TypeError, ValueError):
        raise JecFormatError(where, 0, str(edges)[:40], f"{at}: bad edges") from None


def _collect_rows(node: Any, bins: dict[str, tuple[float, float]], rows: list[_Row],
                  generic: list[Any], inputs: list[str], where: str, at: str) -> None:
    """Walk a correctionlib content node, appending one row per leaf."""
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        rows.append(_Row(dict(bins), (repr(float(node)), ()), ()))
        return
    if not isinstance(node, dict):
        raise JecFormatError(where, 0, str(node)[:40], f"{at}: expected a node or a number")
    kind = node.get("nodetype")
    if kind in ("formula", "formularef"):
        if kind == "formularef":
            idx = node.get("index")
            if not isinstance(idx, int) or not 0 <= idx < len(generic):
                raise JecFormatError(where, 0, str(idx), f"{at}: formularef index out of range "
                                     f"(there are {len(generic)} generic formulas)")
            form = generic[idx]
        else:
            form = node
        if form.get("parser", "TFormula") != "TFormula":
            raise JecFormatError(where, 0, str(form.get("parser")), f"{at}: only the TFormula "
                                 "parser is supported")
        variables = tuple(form.get("variables", []))
        for v in variables:
            if v not in inputs:
                raise JecFormatError(where, 0, v, f"{at}: formula variable is not an input")
        params = node.get("parameters") if kind == "formularef" else form.get("parameters")
        rows.append(_Row(dict(bins), (str(form.get("expression")), variables),
                         tuple(float(p) for p in params or ())))
        return
    if kind == "binning":
        var = node.get("input")
        _binned(var, _edges_of(node, where, at), node.get("content", []), node.get("flow"),
                bins, rows, generic, inputs, where, at)
        return
    if kind == "multibinning":
        vars_ = node.get("inputs", [])
        edge_lists = [_edges_of({"edges": e}, where, at) for e in node.get("edges", [])]
        content = node.get("content", [])
        shape = [len(e) - 1 for e in edge_lists]
        if len(content) != int(np.prod(shape)) or len(vars_) != len(edge_lists):
            raise JecFormatError(where, 0, str(vars_), f"{at}: multibinning content has "
                                 f"{len(content)} entries for bins {shape}")
        flow = node.get("flow")
        for flat, idx in enumerate(np.ndindex(*shape)):
            sub = dict(bins)
            for v, e, i in zip(vars_, edge_lists, idx, strict=True):
                lo, hi = e[i], e[i + 1]
                if flow == "clamp":
                    lo = -math.inf if i == 0 else lo
                    hi = math.inf if i == len(e) - 2 else hi
                sub[v] = _intersect(sub.get(v), (lo, hi))
            _collect_rows(content[flat], sub, rows, generic, inputs, where, f"{at}.content[{flat}]")
        if flow not in ("clamp", "error") and flow is not None:
            raise JecFormatError(where, 0, str(flow)[:40], f"{at}: multibinning flow other than "
                                 "clamp or error is not supported")
        return
    raise JecFormatError(where, 0, str(kind), f"{at}: unsupported node type; supported: "
                         "binning, multibinning, formula, formularef, numbers")


def _intersect(a: tuple[float, float] | None, b: tuple[float, float]) -> tuple[float, float]:
    return b if a is None else (max(a[0], b[0]), min(a[1], b[1]))


def _binned(var: Any, edges: list[float], content: list[Any], flow: Any,
            bins: dict[str, tuple[float, float]], rows: list[_Row], generic: list[Any],
            inputs: list[str], where: str, at: str) -> None:
    if var not in inputs:
        raise JecFormatError(where, 0, str(var), f"{at}: binning input is not an input")
    if len(content) != len(edges) - 1:
        raise JecFormatError(where, 0, str(len(content)), f"{at}: {len(edges)} edges need "
                             f"{len(edges) - 1} contents")
    n = len(content)
    for i, sub in enumerate(content):
        lo, hi = edges[i], edges[i + 1]
        if flow == "clamp":
            lo = -math.inf if i == 0 else lo
            hi = math.inf if i == n - 1 else hi
        _collect_rows(sub, {**bins, var: _intersect(bins.get(var), (lo, hi))}, rows, generic,
                      inputs, where, f"{at}.content[{i}]")
    if flow in ("clamp", "error", None):
        return
    for lo, hi in ((-math.inf, edges[0]), (edges[-1], math.inf)):
        _collect_rows(flow, {**bins, var: _intersect(bins.get(var), (lo, hi))}, rows, generic,
                      inputs, where, f"{at}.flow")
