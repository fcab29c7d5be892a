"""Constants the JEC parser (:mod:`hltemu.jec`) shares with its kernels (:mod:`hltemu.kernels.jec`).

The jet-variable columns of ``values``, the field layout of the kernel tables and the opcodes of
the formula stack programs (layout described in :mod:`hltemu.kernels.jec`).  Plain integers, so
that the parser compiles formulas and builds tables without importing Numba.
"""

from __future__ import annotations

# -- jet variables (columns of ``values``) ----------------------------------------------------
VAR_ETA = 0  # JetEta: pseudorapidity
VAR_PT = 1  # JetPt [GeV], updated after each level
VAR_PHI = 2  # JetPhi [rad]
VAR_E = 3  # JetE [GeV], updated after each level
VAR_AREA = 4  # JetA: jet catchment area (eta x phi units)
VAR_RHO = 5  # Rho [GeV per unit area]: the event's median pT density
N_VARS = 6

MAX_BIN_VARS = 4  # binning variables per level
MAX_PAR_VARS = 4  # formula variables per level: x, y, z, t
STACK_SIZE = 64  # deepest formula stack the interpreter accepts (checked when compiling)

# -- per-level fields (columns of ``levels``) -------------------------------------------------
L_NBIN = 0  # number of binning variables
L_NPAR = 1  # number of formula variables
L_ROW0 = 2  # first row of the level in the row tables
L_ROW1 = 3  # one past its last row
L_EDGE0 = 4  # first entry of the level in ``edges``
L_EDGE1 = 5  # one past its last entry
L_IVL0 = 6  # index in ``cand_offsets`` of the level's first interval
L_BINVAR = 7  # MAX_BIN_VARS columns: variable code of each binning variable
L_PARVAR = L_BINVAR + MAX_BIN_VARS  # MAX_PAR_VARS columns: variable code of x, y, z, t
N_LEVEL_FIELDS = L_PARVAR + MAX_PAR_VARS

# -- per-row fields (columns of ``rows``) -----------------------------------------------------
R_PROG = 0  # program (formula) index
R_PAR0 = 1  # first parameter of the row in ``params``
N_ROW_FIELDS = 2

# -- opcodes ----------------------------------------------------------------------------------
# Leaves push one value.
OP_CONST = 0  # push code_arg
OP_PARAM = 1  # push params[row start + code_arg]
OP_VAR = 2  # push the clamped formula variable number code_arg (x=0, y=1, z=2, t=3)
# Binary operators pop b then a and push f(a, b).
OP_ADD = 10
OP_SUB = 11
OP_MUL = 12
OP_DIV = 13
OP_POW = 14
OP_MAX = 15  # (a < b) ? b : a, as std::max
OP_MIN = 16  # (b < a) ? b : a, as std::min
OP_ATAN2 = 17
# Unary operators replace the top of the stack.
OP_NEG = 30
OP_EXP = 31
OP_LOG = 32
OP_LOG10 = 33
OP_SQRT = 34
OP_ABS = 35
OP_ERF = 36
OP_SIN = 37
OP_COS = 38
OP_TAN = 39
OP_ATAN = 40
OP_SINH = 41
OP_COSH = 42
OP_TANH = 43
OP_ASIN = 44
OP_ACOS = 45
FIRST_BINARY = OP_ADD
FIRST_UNARY = OP_NEG
