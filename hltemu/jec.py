"""CMS jet energy corrections: the JEC text format, correctionlib JSON, and their evaluation.

A correction *level* (L1FastJet, L2Relative, L3Absolute, L2L3Residual, ...) is a table of rows.
Each row covers a box in the *binning variables* (half-open ranges ``[lo, hi)``, the first row
containing the jet wins, no row means a factor of 1) and gives the parameters of one formula in
the *formula variables* ``x, y, z, t``, each clamped to the row's range before evaluation::

    {1 JetEta 1 JetPt max(0.0001,[0]+[1]*TMath::Erf([2]*(log10(x)-[3]))) Correction L2Relative}
    -5.191 -4.889  5  7.1 36.2  0.98 0.11 1.3 0.6     <- eta range, 5 numbers follow:
                                                        pt clamp range, then [0] [1] [2] [3]

Variables are named as in CMS: ``JetEta``, ``JetPt`` [GeV], ``JetPhi`` [rad], ``JetE`` [GeV],
``JetA`` (area) and ``Rho`` [GeV per unit area] (:data:`JEC_VARIABLES`).  A chain of levels
(:class:`JecChain`) applies each level to the pT and energy the previous one left, as CMS's
FactorizedJetCorrector does.

Public API
----------
:func:`read_jec_text`, :func:`parse_jec_text`
    CMS text files (plain or gzipped); malformed input raises :class:`JecFormatError` naming
    the file, the line and the offending token.
:class:`Formula`
    the TFormula subset the files use: ``+ - * / ^``, ``pow exp log log10 sqrt abs max min erf``
    and trigonometric/hyperbolic functions, ``TMath::`` spellings (``TMath::Erf``,
    ``TMath::Power``, ``TMath::Log``, ...), parameters ``[i]``, variables ``x y z t``.  It
    evaluates with NumPy (the reference) and compiles to a stack program that
    :mod:`hltemu.kernels.jec` interprets on the ``cpu`` and ``cuda`` backends.
:func:`write_correctionlib`, :func:`read_correctionlib`, :func:`level_to_correctionlib`
    correctionlib JSON (schema v2), written and read without importing correctionlib.
:func:`load_level`, :func:`load_chain`
    one entry of the ``[jec] levels`` configuration: a text file, ``FILE.json#NAME`` or
    ``builtin:NAME`` (a file shipped in ``hltemu/models``).

Departures from CMS, on purpose: bin boundaries and variables are compared in double precision
(CMS stores them as float32, so a jet within float32 rounding of a boundary may fall in the
neighbouring bin in CMSSW); "Response"-type files (which CMS inverts numerically) are refused.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hltemu.kernels import jec as K

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

FORMULA_VARIABLES: tuple[str, ...] = ("x", "y", "z", "t")


class JecError(ValueError):
    """A correction that cannot be read, written or evaluated."""


class JecFormatError(JecError):
    """A malformed JEC text file or correctionlib JSON, with the place of the fault.

    Attributes: ``source`` (file), ``line`` (1-based, 0 when not line-based), ``token`` (the
    offending text) and ``reason``.
    """

    def __init__(self, source: str, line: int, token: str, reason: str) -> None:
        self.source, self.line, self.token, self.reason = source, line, token, reason
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {reason} (at token {token!r})")


# =============================================================================================
# Formulas
# =============================================================================================


class FormulaError(JecError):
    """A formula that cannot be parsed; ``position`` is the 0-based character offset."""

    def __init__(self, text: str, position: int, token: str, reason: str) -> None:
        self.text, self.position, self.token, self.reason = text, position, token, reason
        super().__init__(f"{reason} at character {position + 1} of {text!r} (token {token!r})")


#: Function name -> (opcode, number of arguments, name written to correctionlib).
_FUNCTIONS: dict[str, tuple[int, int, str]] = {
    "exp": (K.OP_EXP, 1, "exp"),
    "log": (K.OP_LOG, 1, "log"),
    "log10": (K.OP_LOG10, 1, "log10"),
    "sqrt": (K.OP_SQRT, 1, "sqrt"),
    "abs": (K.OP_ABS, 1, "abs"),
    "erf": (K.OP_ERF, 1, "erf"),
    "sin": (K.OP_SIN, 1, "sin"),
    "cos": (K.OP_COS, 1, "cos"),
    "tan": (K.OP_TAN, 1, "tan"),
    "atan": (K.OP_ATAN, 1, "atan"),
    "asin": (K.OP_ASIN, 1, "asin"),
    "acos": (K.OP_ACOS, 1, "acos"),
    "sinh": (K.OP_SINH, 1, "sinh"),
    "cosh": (K.OP_COSH, 1, "cosh"),
    "tanh": (K.OP_TANH, 1, "tanh"),
    "pow": (K.OP_POW, 2, "pow"),
    "max": (K.OP_MAX, 2, "max"),
    "min": (K.OP_MIN, 2, "min"),
    "atan2": (K.OP_ATAN2, 2, "atan2"),
}
_ALIASES: dict[str, str] = {
    "fabs": "abs",
    "TMath::Exp": "exp", "TMath::Log": "log", "TMath::Log10": "log10", "TMath::Sqrt": "sqrt",
    "TMath::Abs": "abs", "TMath::Erf": "erf", "TMath::Power": "pow", "TMath::Max": "max",
    "TMath::Min": "min", "TMath::Sin": "sin", "TMath::Cos": "cos", "TMath::Tan": "tan",
    "TMath::ATan": "atan", "TMath::ASin": "asin", "TMath::ACos": "acos", "TMath::SinH": "sinh",
    "TMath::CosH": "cosh", "TMath::TanH": "tanh", "TMath::ATan2": "atan2",
}
_BINARY_OPS: dict[str, int] = {"+": K.OP_ADD, "-": K.OP_SUB, "*": K.OP_MUL, "/": K.OP_DIV,
                               "^": K.OP_POW}

_TOKEN_RE = re.compile(
    r"\s*(?:"
    r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<par>\[\s*\d+\s*\])"
    r"|(?P<name>[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)"
    r"|(?P<op>[-+*/^(),])"
    r")"
)


class Token(NamedTuple):
    kind: str  # "num", "par", "name", "op", "end"
    text: str
    position: int


def tokenize(text: str) -> list[Token]:
    """Split a TFormula expression into tokens; raises :class:`FormulaError` on a bad character."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.lastgroup is None:
            start = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise FormulaError(text, start, text[start], "unexpected character")
        kind = m.lastgroup
        tokens.append(Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class Node(NamedTuple):
    """A formula expression tree node.

    ``kind`` is ``"num"`` (``value`` the number), ``"par"`` (``value`` the parameter index),
    ``"var"`` (``value`` the variable index, x=0 ... t=3), ``"op"`` (``value`` an opcode of
    :mod:`hltemu.kernels.jec`, ``args`` its operands).
    """

    kind: str
    value: float | int
    args: tuple[Node, ...] = ()


class _Parser:
    """Recursive descent over the grammar (precedence as correctionlib's TFormula parser)::

        expr   := term (('+' | '-') term)*
        term   := factor (('*' | '/') factor)*
        factor := unary ('^' unary)*          left-associative; -x^2 is (-x)^2
        unary  := ('-' | '+') unary | atom
        atom   := NUMBER | '[' INT ']' | x | y | z | t | NAME '(' expr (',' expr)* ')'
                | '(' expr ')'
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, tok: Token, reason: str) -> FormulaError:
        return FormulaError(self.text, tok.position, tok.text or "<end>", reason)

    def expect(self, text: str) -> Token:
        tok = self.take()
        if tok.text != text:
            raise self.fail(tok, f"expected {text!r}")
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.fail(self.peek(), "empty formula")
        node = self.expr()
        if self.peek().kind != "end":
            raise self.fail(self.peek(), "unexpected token after a complete expression")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek().text in ("+", "-") and self.peek().kind == "op":
            op = _BINARY_OPS[self.take().text]
            node = Node("op", op, (node, self.term()))
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek().text in ("*", "/") and self.peek().kind == "op":
            op = _BINARY_OPS[self.take().text]
            node = Node("op", op, (node, self.factor()))
        return node

    def factor(self) -> Node:
        node = self.unary()
        while self.peek().text == "^":
            self.take()
            node = Node("op", K.OP_POW, (node, self.unary()))
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("-", "+"):
            self.take()
            operand = self.unary()
            return Node("op", K.OP_NEG, (operand,)) if tok.text == "-" else operand
        return self.atom()

    def atom(self) -> Node:
        tok = self.take()
        if tok.kind == "num":
            return Node("num", float(tok.text))
        if tok.kind == "par":
            return Node("par", int(tok.text.strip("[] ")))
        if tok.kind == "op" and tok.text == "(":
            node = self.expr()
            self.expect(")")
            return node
        if tok.kind == "name":
            if tok.text in FORMULA_VARIABLES:
                return Node("var", FORMULA_VARIABLES.index(tok.text))
            name = _ALIASES.get(tok.text, tok.text)
            if name not in _FUNCTIONS:
                known = sorted({*_FUNCTIONS, *_ALIASES, *FORMULA_VARIABLES})
                raise self.fail(tok, f"unknown name; known: {', '.join(known)}")
            op, nargs, _ = _FUNCTIONS[name]
            self.expect("(")
            args = [self.expr()]
            while self.peek().text == ",":
                self.take()
                args.append(self.expr())
            close = self.peek()
            self.expect(")")
            if len(args) != nargs:
                raise self.fail(close, f"{tok.text} takes {nargs} argument(s), got {len(args)}")
            return Node("op", op, tuple(args))
        raise self.fail(tok, "expected a number, [i], x, y, z, t, a function or '('")


def _np_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(a < b, b, a)  # std::max: NaN in b is ignored, NaN in a is kept


def _np_min(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(b < a, b, a)  # std::min


_np_erf = np.frompyfunc(math.erf, 1, 1)

_NUMPY_UNARY = {
    K.OP_NEG: np.negative, K.OP_EXP: np.exp, K.OP_LOG: np.log, K.OP_LOG10: np.log10,
    K.OP_SQRT: np.sqrt, K.OP_ABS: np.abs,
    K.OP_ERF: lambda a: np.asarray(_np_erf(a), dtype=np.float64),
    K.OP_SIN: np.sin, K.OP_COS: np.cos, K.OP_TAN: np.tan, K.OP_ATAN: np.arctan,
    K.OP_ASIN: np.arcsin, K.OP_ACOS: np.arccos, K.OP_SINH: np.sinh, K.OP_COSH: np.cosh,
    K.OP_TANH: np.tanh,
}
_NUMPY_BINARY = {
    K.OP_ADD: np.add, K.OP_SUB: np.subtract, K.OP_MUL: np.multiply, K.OP_DIV: np.divide,
    K.OP_POW: np.power, K.OP_MAX: _np_max, K.OP_MIN: _np_min, K.OP_ATAN2: np.arctan2,
}


class Formula:
    """A parsed TFormula expression.

    Attributes
    ----------
    text:
        The expression as written.
    tree:
        Its :class:`Node` tree.
    n_params:
        Number of parameters it reads (highest ``[i]`` plus one).
    n_vars:
        Number of variables it reads (``x`` -> 1, ... ``t`` -> 4; 0 for a constant).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tree = _Parser(text).parse()
        self.n_params = 1 + max((n.value for n in _walk(self.tree) if n.kind == "par"), default=-1)
        self.n_vars = 1 + max((n.value for n in _walk(self.tree) if n.kind == "var"), default=-1)
        self.code_op, self.code_arg, self.stack_depth = _compile(self.tree)
        if self.stack_depth > K.STACK_SIZE:
            raise FormulaError(text, 0, text[:20], f"needs a stack of {self.stack_depth} "
                               f"entries, more than the {K.STACK_SIZE} the kernels provide")

    def __repr__(self) -> str:
        return f"Formula({self.text!r})"

    def remap_vars(self, mapping: Sequence[int]) -> Formula:
        """The same formula reading variable ``mapping[i]`` where it read variable ``i``."""
        out = object.__new__(Formula)
        out.text = self.text
        out.tree = _remap(self.tree, mapping)
        out.n_params = self.n_params
        out.n_vars = 1 + max((n.value for n in _walk(out.tree) if n.kind == "var"), default=-1)
        out.code_op, out.code_arg, out.stack_depth = _compile(out.tree)
        return out

    def evaluate(self, params: Any, xs: Sequence[Any]) -> np.ndarray:
        """Evaluate with NumPy (the reference).

        ``params``: shape ``(n, n_params)`` (or ``(n_params,)``, shared by every point);
        ``xs``: the variables x, y, ... as arrays of shape ``(n,)`` (or scalars).  Returns the
        values, float64, broadcast over the points.  Invalid operations give NaN or inf, as in
        C; ``max``/``min`` follow ``std::max``/``std::min`` on NaN.
        """
        params = np.asarray(params, dtype=np.float64)
        xs = [np.asarray(x, dtype=np.float64) for x in xs]
        if len(xs) < self.n_vars:
            raise JecError(f"formula {self.text!r} uses {self.n_vars} variable(s), got {len(xs)}")
        if (params.shape[-1] if params.ndim else 0) < self.n_params:
            raise JecError(f"formula {self.text!r} uses {self.n_params} parameter(s), got "
                           f"shape {params.shape}")
        shape = np.broadcast_shapes(params.shape[:-1], *(x.shape for x in xs))
        with np.errstate(all="ignore"):
            value = _eval_numpy(self.tree, params, xs)
        return np.array(np.broadcast_to(value, shape), dtype=np.float64)


def _walk(node: Node):
    yield node
    for a in node.args:
        yield from _walk(a)


def _remap(node: Node, mapping: Sequence[int]) -> Node:
    if node.kind == "var":
        return Node("var", int(mapping[int(node.value)]))
    return Node(node.kind, node.value, tuple(_remap(a, mapping) for a in node.args))


def _eval_numpy(node: Node, params: np.ndarray, xs: list[np.ndarray]) -> Any:
    if node.kind == "num":
        return np.float64(node.value)
    if node.kind == "par":
        return params[..., int(node.value)]
    if node.kind == "var":
        return xs[int(node.value)]
    args = [_eval_numpy(a, params, xs) for a in node.args]
    if len(args) == 1:
        return _NUMPY_UNARY[int(node.value)](args[0])
    return _NUMPY_BINARY[int(node.value)](args[0], args[1])


def _compile(tree: Node) -> tuple[np.ndarray, np.ndarray, int]:
    """Post-order (reverse Polish) program of a tree: opcodes, arguments, stack depth."""
    ops: list[int] = []
    args: list[float] = []
    depth = 0
    max_depth = 0

    def emit(node: Node) -> None:
        nonlocal depth, max_depth
        if node.kind in ("num", "par", "var"):
            ops.append({"num": K.OP_CONST, "par": K.OP_PARAM, "var": K.OP_VAR}[node.kind])
            args.append(float(node.value))
            depth += 1
            max_depth = max(max_depth, depth)
            return
        for a in node.args:
            emit(a)
        ops.append(int(node.value))
        args.append(0.0)
        depth -= len(node.args) - 1

    emit(tree)
    return np.asarray(ops, dtype=np.int64), np.asarray(args, dtype=np.float64), max_depth


def correctionlib_expression(formula: Formula, n_par_vars: int, clamp: bool = True) -> str:
    """The formula's text as correctionlib's TFormula parser accepts it.

    ``TMath::`` and ``fabs`` spellings become plain names (correctionlib rejects them).  With
    ``clamp``, parameters are renumbered ``[i] -> [i + 2 n_par_vars]`` and each variable ``v``
    (number ``k``) becomes ``min(max(v,[2k]),[2k+1])``: the row's parameter list is then exactly
    the CMS row, clamp ranges first.  The rest of the text is kept as written.
    """
    out = []
    for tok in tokenize(formula.text)[:-1]:
        if tok.kind == "name" and tok.text in FORMULA_VARIABLES:
            k = FORMULA_VARIABLES.index(tok.text)
            out.append(f"min(max({tok.text},[{2 * k}]),[{2 * k + 1}])" if clamp else tok.text)
        elif tok.kind == "name":
            out.append(_FUNCTIONS[_ALIASES.get(tok.text, tok.text)][2])
        elif tok.kind == "par" and clamp:
            out.append(f"[{int(tok.text.strip('[] ')) + 2 * n_par_vars}]")
        else:
            out.append(tok.text)
    return "".join(out)


# =============================================================================================
# Correction levels and the CMS text format
# =============================================================================================


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


# =============================================================================================
# Chains, configuration entries, kernel tables
# =============================================================================================


def builtin_path(name: str) -> Path:
    """A correction file shipped in ``hltemu/models``."""
    root = Path(str(resources.files("hltemu") / "models"))
    path = root / name
    if not path.is_file():
        shipped = sorted(p.name for p in root.iterdir() if p.suffix in (".txt", ".json", ".gz"))
        raise JecError(f"no built-in correction {name!r}; shipped: {', '.join(shipped) or 'none'}")
    return path


def load_level(entry: str) -> list[JecLevel]:
    """The level(s) one configuration entry names.

    ``PATH`` (CMS text, plain or gzipped), ``PATH#SECTION`` (a section of a multi-section text
    file), ``PATH.json#NAME`` (a correction, or a compound correction's levels, from
    correctionlib JSON; ``#NAME`` may be left out when the file holds one correction), or
    ``builtin:NAME`` for a file in ``hltemu/models``.
    """
    spec, _, name = entry.partition("#")
    path = builtin_path(spec[len("builtin:"):]) if spec.startswith("builtin:") else Path(spec)
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
        p = builtin_path(spec[len("builtin:"):]) if spec.startswith("builtin:") else Path(spec)
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


# =============================================================================================
# correctionlib JSON (schema v2)
# =============================================================================================

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
