"""Jet energy corrections: a formula interpreter and the per-jet correction chain.

Every jet is corrected independently, so one CPU iteration or one CUDA thread handles one jet.
The arithmetic is written once, as plain Python scalar functions (``_make_device_functions``),
and compiled twice: with ``numba.njit`` for the ``cpu`` backend and with
``cuda.jit(device=True)`` for the ``cuda`` backend (fbpic style).  Only the outermost loops
differ: ``correct_jets_cpu`` (``prange`` over chunks of jets) and ``correct_jets_cuda`` (one thread
per jet).

Formulas are not compiled per file.  :mod:`hltemu.jec` translates each TFormula into a small
stack program (reverse Polish notation): ``code_op[i]`` is an opcode below, ``code_arg[i]`` its
argument (a constant value, a parameter index or a variable index).  One interpreter,
compiled once, evaluates every formula of every level on both targets.

Table layout (built by :func:`hltemu.jec.build_tables`; every array is float64 or int64):

``levels`` (n_levels, N_LEVEL_FIELDS) int64
    per correction level: number of binning and formula variables, its row range, its slice of
    ``edges`` and of the interval list, and the variable codes (``VAR_*``) of its binning and
    formula variables.
``bin_lo``, ``bin_hi`` (n_rows, MAX_BIN_VARS) float64
    half-open bin ranges ``[lo, hi)`` of each row in each binning variable.
``var_lo``, ``var_hi`` (n_rows, MAX_PAR_VARS) float64
    the range each formula variable is clamped to in this row (CMS semantics).
``rows`` (n_rows, N_ROW_FIELDS) int64
    program index, first parameter in ``params``.
``params`` (n_params,) float64
    formula parameters ``[0], [1], ...`` of every row, concatenated.
``edges`` (n_edges,) float64; ``cand_offsets`` (n_intervals + 1,) int64; ``cand_rows`` int64
    a search index on the first binning variable: the sorted distinct bin boundaries of a level,
    and for each interval between consecutive boundaries the rows (in file order) whose range
    covers it.  The first of those rows that contains the jet in every binning variable is the
    row CMS would pick (first match in file order).
``programs`` (n_programs, 2) int64; ``code_op`` int64; ``code_arg`` float64
    each program is ``code_op[start:stop]``.

Jet variables travel in ``values`` (n_jets, N_VARS) float64, columns ``VAR_*``; the kernels
multiply ``values[:, VAR_PT]`` and ``values[:, VAR_E]`` by each level's factor before the next
level, as CMS's FactorizedJetCorrector does, and write each level's factor to
``factors`` (n_jets, n_levels).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

# The jet-variable columns (VAR_*), limits, table fields (L_*, R_*) and opcodes (OP_*) live
# in hltemu.jec.opcodes, shared with the parser without importing Numba.
from hltemu.jec.opcodes import (  # noqa: F401 (re-exported: K.VAR_PT, K.STACK_SIZE, ...)
    FIRST_BINARY,
    FIRST_UNARY,
    L_BINVAR,
    L_EDGE0,
    L_EDGE1,
    L_IVL0,
    L_NBIN,
    L_NPAR,
    L_PARVAR,
    L_ROW0,
    L_ROW1,
    MAX_BIN_VARS,
    MAX_PAR_VARS,
    N_LEVEL_FIELDS,
    N_ROW_FIELDS,
    N_VARS,
    OP_ABS,
    OP_ACOS,
    OP_ADD,
    OP_ASIN,
    OP_ATAN,
    OP_ATAN2,
    OP_CONST,
    OP_COS,
    OP_COSH,
    OP_DIV,
    OP_ERF,
    OP_EXP,
    OP_LOG,
    OP_LOG10,
    OP_MAX,
    OP_MIN,
    OP_MUL,
    OP_NEG,
    OP_PARAM,
    OP_POW,
    OP_SIN,
    OP_SINH,
    OP_SQRT,
    OP_SUB,
    OP_TAN,
    OP_TANH,
    OP_VAR,
    R_PAR0,
    R_PROG,
    STACK_SIZE,
    VAR_AREA,
    VAR_E,
    VAR_ETA,
    VAR_PHI,
    VAR_PT,
    VAR_RHO,
)

#: Jets per CPU work item (one scratch allocation per chunk).
CPU_CHUNK = 256


def _make_device_functions(jit, quiet, exp, log, log10, sqrt, pow_, erf, sin, cos, tan, atan,
                           atan2, sinh, cosh, tanh, asin, acos):
    """Build the scalar functions for one target.

    ``jit`` is ``numba.njit(...)`` or ``cuda.jit(device=True)``; the math functions are
    :mod:`math`'s (compiled by Numba for either target), or NumPy's under the CUDA simulator,
    where device functions run as Python and :mod:`math` would raise on ``log(-1)`` or
    ``exp(1000)`` instead of returning NaN or inf as compiled code does.  ``quiet`` wraps the
    operator functions: the identity when compiling, NumPy float semantics without warnings
    under the simulator.
    """

    def unary(op, a):
        if op == OP_NEG:
            return -a
        if op == OP_EXP:
            return exp(a)
        if op == OP_LOG:
            return log(a)
        if op == OP_LOG10:
            return log10(a)
        if op == OP_SQRT:
            return sqrt(a)
        if op == OP_ABS:
            return abs(a)
        if op == OP_ERF:
            return erf(a)
        if op == OP_SIN:
            return sin(a)
        if op == OP_COS:
            return cos(a)
        if op == OP_TAN:
            return tan(a)
        if op == OP_ATAN:
            return atan(a)
        if op == OP_SINH:
            return sinh(a)
        if op == OP_COSH:
            return cosh(a)
        if op == OP_TANH:
            return tanh(a)
        if op == OP_ASIN:
            return asin(a)
        if op == OP_ACOS:
            return acos(a)
        return math.nan

    def binary(op, a, b):
        if op == OP_ADD:
            return a + b
        if op == OP_SUB:
            return a - b
        if op == OP_MUL:
            return a * b
        if op == OP_DIV:
            return a / b
        if op == OP_POW:
            return pow_(a, b)
        if op == OP_MAX:
            return b if a < b else a
        if op == OP_MIN:
            return b if b < a else a
        if op == OP_ATAN2:
            return atan2(a, b)
        return math.nan

    unary_j = jit(quiet(unary))
    binary_j = jit(quiet(binary))

    def eval_program(code_op, code_arg, start, stop, params, par0, xs, stack):
        """Run ``code_op[start:stop]`` on the clamped variables ``xs`` and the row's parameters
        ``params[par0:]``; ``stack`` is scratch of STACK_SIZE entries.  Returns the value."""
        sp = 0
        for i in range(start, stop):
            op = code_op[i]
            if op == OP_PARAM:
                stack[sp] = params[par0 + int(code_arg[i])]
                sp += 1
            elif op == OP_VAR:
                stack[sp] = xs[int(code_arg[i])]
                sp += 1
            elif op == OP_CONST:
                stack[sp] = code_arg[i]
                sp += 1
            elif op < FIRST_UNARY:
                sp -= 1
                stack[sp - 1] = binary_j(op, stack[sp - 1], stack[sp])
            else:
                stack[sp - 1] = unary_j(op, stack[sp - 1])
        return stack[0]

    eval_program_j = jit(eval_program)

    def find_row(j, level, values, levels, bin_lo, bin_hi, edges, cand_offsets, cand_rows):
        """Row of ``level`` whose bins contain jet ``j`` (first match in file order), or -1."""
        nbin = levels[level, L_NBIN]
        k = 0
        if nbin > 0:
            v = values[j, levels[level, L_BINVAR]]
            e0 = levels[level, L_EDGE0]
            e1 = levels[level, L_EDGE1]
            # upper bound: the first edge > v; NaN compares false everywhere and finds nothing
            lo = e0
            hi = e1
            while lo < hi:
                mid = (lo + hi) // 2
                if edges[mid] <= v:
                    lo = mid + 1
                else:
                    hi = mid
            k = lo - 1 - e0
            if k < 0 or lo >= e1:
                return -1
        ivl = levels[level, L_IVL0] + k
        for c in range(cand_offsets[ivl], cand_offsets[ivl + 1]):
            r = cand_rows[c]
            inside = True
            for b in range(nbin):
                v = values[j, levels[level, L_BINVAR + b]]
                if not (v >= bin_lo[r, b] and v < bin_hi[r, b]):
                    inside = False
                    break
            if inside:
                return r
        return -1

    find_row_j = jit(find_row)

    def correct_one(j, values, levels, bin_lo, bin_hi, var_lo, var_hi, rows, params, edges,
                    cand_offsets, cand_rows, programs, code_op, code_arg, factors, xs, stack):
        """Apply every level in turn to jet ``j``: factors[j, level] and the updated pT and E."""
        for level in range(levels.shape[0]):
            r = find_row_j(j, level, values, levels, bin_lo, bin_hi, edges, cand_offsets,
                           cand_rows)
            f = 1.0
            if r >= 0:
                for k in range(levels[level, L_NPAR]):
                    v = values[j, levels[level, L_PARVAR + k]]
                    lo = var_lo[r, k]
                    hi = var_hi[r, k]
                    xs[k] = lo if v < lo else (hi if v > hi else v)
                p = rows[r, R_PROG]
                f = eval_program_j(code_op, code_arg, programs[p, 0], programs[p, 1], params,
                                   rows[r, R_PAR0], xs, stack)
            factors[j, level] = f
            values[j, VAR_PT] = values[j, VAR_PT] * f
            values[j, VAR_E] = values[j, VAR_E] * f

    return jit(correct_one), eval_program_j


_MATH = dict(exp=math.exp, log=math.log, log10=math.log10, sqrt=math.sqrt, pow_=math.pow,
             erf=math.erf, sin=math.sin, cos=math.cos, tan=math.tan, atan=math.atan,
             atan2=math.atan2, sinh=math.sinh, cosh=math.cosh, tanh=math.tanh, asin=math.asin,
             acos=math.acos)


def _compiled(fn):
    return fn


def _simulated(fn):
    """Run an operator function with NumPy scalars and floating-point warnings off (the CUDA
    simulator's threads run Python, where 1.0 / 0.0 raises instead of giving inf)."""

    def wrapped(op, *args):
        with np.errstate(all="ignore"):
            return fn(op, *(np.float64(a) for a in args))

    return wrapped


_NUMPY_MATH = dict(exp=np.exp, log=np.log, log10=np.log10, sqrt=np.sqrt, pow_=np.power,
                   erf=math.erf, sin=np.sin, cos=np.cos, tan=np.tan, atan=np.arctan,
                   atan2=np.arctan2, sinh=np.sinh, cosh=np.cosh, tanh=np.tanh, asin=np.arcsin,
                   acos=np.arccos)

_njit = numba.njit(cache=True, error_model="numpy", inline="always")
_correct_one_cpu, eval_program_cpu = _make_device_functions(_njit, _compiled, **_MATH)
if numba.config.ENABLE_CUDASIM:
    _correct_one_cuda, eval_program_cuda = _make_device_functions(
        cuda.jit(device=True), _simulated, **_NUMPY_MATH)
else:
    _correct_one_cuda, eval_program_cuda = _make_device_functions(
        cuda.jit(device=True), _compiled, **_MATH)


@numba.njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def correct_jets_cpu(values, levels, bin_lo, bin_hi, var_lo, var_hi, rows, params, edges,
                     cand_offsets, cand_rows, programs, code_op, code_arg, factors):
    """Correct every jet in place (``values`` pT and E columns) and fill ``factors``.

    Arrays as in the module docstring; ``values`` (n_jets, N_VARS), ``factors``
    (n_jets, n_levels).  Parallel over chunks of CPU_CHUNK jets.
    """
    n = values.shape[0]
    n_chunks = (n + CPU_CHUNK - 1) // CPU_CHUNK
    for c in numba.prange(n_chunks):
        xs = np.empty(MAX_PAR_VARS, dtype=np.float64)
        stack = np.empty(STACK_SIZE, dtype=np.float64)
        for j in range(c * CPU_CHUNK, min(n, (c + 1) * CPU_CHUNK)):
            _correct_one_cpu(j, values, levels, bin_lo, bin_hi, var_lo, var_hi, rows, params,
                             edges, cand_offsets, cand_rows, programs, code_op, code_arg,
                             factors, xs, stack)


@cuda.jit(cache=True)
def correct_jets_cuda(values, levels, bin_lo, bin_hi, var_lo, var_hi, rows, params, edges,
                      cand_offsets, cand_rows, programs, code_op, code_arg, factors):
    """One thread per jet: same arguments and result as :func:`correct_jets_cpu`."""
    j = cuda.grid(1)
    if j < values.shape[0]:
        xs = cuda.local.array(MAX_PAR_VARS, numba.float64)
        stack = cuda.local.array(STACK_SIZE, numba.float64)
        _correct_one_cuda(j, values, levels, bin_lo, bin_hi, var_lo, var_hi, rows, params,
                          edges, cand_offsets, cand_rows, programs, code_op, code_arg, factors,
                          xs, stack)


@numba.njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def eval_formula_cpu(code_op, code_arg, params, xs, out):
    """Evaluate one program (the whole ``code_op``) per point: ``params`` (n, n_params),
    ``xs`` (n, MAX_PAR_VARS), ``out`` (n,).  Used to test the interpreter on its own."""
    for i in numba.prange(out.shape[0]):
        stack = np.empty(STACK_SIZE, dtype=np.float64)
        out[i] = eval_program_cpu(code_op, code_arg, 0, code_op.shape[0], params[i], 0, xs[i],
                                  stack)


@cuda.jit(cache=True)
def eval_formula_cuda(code_op, code_arg, params, xs, out):
    """One thread per point: same arguments and result as :func:`eval_formula_cpu`."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        stack = cuda.local.array(STACK_SIZE, numba.float64)
        out[i] = eval_program_cuda(code_op, code_arg, 0, code_op.shape[0], params[i], 0, xs[i],
                                   stack)
