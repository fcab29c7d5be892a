"""TFormula expressions: tokenizer, parser, NumPy evaluation and the kernels' stack programs.

:class:`Formula` parses the TFormula subset the CMS files use into a :class:`Node` tree,
evaluates it with NumPy (the reference) and compiles it to the reverse-Polish program
(opcodes of :mod:`hltemu.jec.opcodes`) that :mod:`hltemu.kernels.jec` interprets;
:func:`correctionlib_expression` rewrites its text for correctionlib.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from hltemu.jec import opcodes as K
from hltemu.jec.errors import JecError

FORMULA_VARIABLES: tuple[str, ...] = ("x", "y", "z", "t")


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
