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

from hltemu.jec.chain import (
    JecChain,
    JecTables,
    build_tables,
    builtin_path,
    load_chain,
    load_level,
    values_matrix,
)
from hltemu.jec.cms_text import (
    JEC_VARIABLES,
    KNOWN_LEVELS,
    JecLevel,
    level_label,
    parse_jec_text,
    read_jec_text,
)
from hltemu.jec.correctionlib_json import (
    correction_name,
    level_to_correctionlib,
    read_correctionlib,
    write_correctionlib,
)
from hltemu.jec.errors import JecError, JecFormatError
from hltemu.jec.formula import (
    FORMULA_VARIABLES,
    Formula,
    FormulaError,
    Node,
    Token,
    correctionlib_expression,
    tokenize,
)

__all__ = [
    "FORMULA_VARIABLES",
    "JEC_VARIABLES",
    "KNOWN_LEVELS",
    "Formula",
    "FormulaError",
    "JecChain",
    "JecError",
    "JecFormatError",
    "JecLevel",
    "JecTables",
    "Node",
    "Token",
    "build_tables",
    "builtin_path",
    "correction_name",
    "correctionlib_expression",
    "level_label",
    "level_to_correctionlib",
    "load_chain",
    "load_level",
    "parse_jec_text",
    "read_correctionlib",
    "read_jec_text",
    "tokenize",
    "values_matrix",
    "write_correctionlib",
]
