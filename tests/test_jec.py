"""JEC formats and evaluation: parser errors, formula interpreter, real CMS files against
correctionlib and coffea, correctionlib JSON round trips, the ``jec`` stage on every backend."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from hltemu.kernels import jec as K
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hltemu import jec
from hltemu.backends import cuda_simulator_enabled, cuda_status, get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError
from hltemu.pipeline import PipelineError, get_stage, load_config
from hltemu.stages.jec import JecConfig

JEC_DIR = Path(__file__).resolve().parent / "data" / "jec"
REAL_FILES = sorted(JEC_DIR.iterdir())
REAL_FILES = [p for p in REAL_FILES if ".txt" in p.name]
PUPPI = [JEC_DIR / f"Summer16_23Sep2016V3_MC_{lv}_AK4PFPuppi.jec.txt.gz"
         for lv in ("L1FastJet", "L2Relative", "L3Absolute", "L2L3Residual")]
N_POINTS = 100_000


def cuda_usable() -> bool:
    return cuda_status()[0]


def correctionlib_evaluator(tmp_path: Path, levels, compound=None):
    correctionlib = pytest.importorskip("correctionlib")
    import correctionlib.schemav2 as cs

    path = tmp_path / "jec.json"
    cset = jec.write_correctionlib(path, levels, compound=compound)
    cs.CorrectionSet.model_validate(cset)  # the written JSON follows schema v2
    return correctionlib.CorrectionSet.from_file(str(path)), cset


# ---------------------------------------------------------------------------------------------
# Formulas
# ---------------------------------------------------------------------------------------------

FORMULA_CASES = [
    ("1", {}, 1.0),
    ("2+3*4", {}, 14.0),
    ("(2+3)*4", {}, 20.0),
    ("2-3-4", {}, -5.0),
    ("8/4/2", {}, 1.0),
    ("-x^2", {"x": 3.0}, 9.0),  # correctionlib: unary minus binds first
    ("2^3^2", {}, 64.0),  # left-associative, as correctionlib
    ("-2*-x", {"x": 3.0}, 6.0),
    ("1e-3*x+.5", {"x": 2.0}, 0.502),
    ("[0]+[1]*x", {"x": 2.0, "p": [1.0, 10.0]}, 21.0),
    ("max(0.0001,[0]-x)", {"x": 5.0, "p": [1.0]}, 0.0001),
    ("min(x,y)", {"x": 5.0, "y": 2.0}, 2.0),
    ("TMath::Power(x,2)+pow(y,3)", {"x": 3.0, "y": 2.0}, 17.0),
    ("TMath::Log(x)+log10(y)", {"x": math.e, "y": 100.0}, 3.0),
    ("TMath::Erf(x)", {"x": 0.5}, math.erf(0.5)),
    ("exp(x)*sqrt(y)*abs(-z)*fabs(-t)", {"x": 0.0, "y": 4.0, "z": 3.0, "t": 2.0}, 12.0),
    ("TMath::Max(x,1)+TMath::Min(x,1)+TMath::Exp(0)+TMath::Sqrt(4)+TMath::Abs(-1)",
     {"x": 3.0}, 8.0),
    ("cosh(x)-sinh(x)", {"x": 1.0}, math.exp(-1.0)),
    ("atan2(y,x)+tanh(0)+atan(0)+asin(0)+acos(1)+sin(0)+cos(0)+tan(0)", {"x": 1.0, "y": 1.0},
     math.pi / 4 + 1.0),
    (" 1 + x ", {"x": 1.0}, 2.0),
]


@pytest.mark.parametrize("text, env, expected", FORMULA_CASES)
def test_formula_values(text, env, expected):
    f = jec.Formula(text)
    xs = [env.get(v, 0.0) for v in "xyzt"]
    params = np.asarray(env.get("p", [0.0]))
    ref = f.evaluate(params[None, :], [np.array([x]) for x in xs])
    assert ref[0] == pytest.approx(expected, rel=1e-14, abs=1e-15)
    out = np.zeros(1)
    K.eval_formula_cpu(f.code_op, f.code_arg, params[None, :], np.asarray([xs]), out)
    assert out[0] == pytest.approx(expected, rel=1e-14, abs=1e-15)


@pytest.mark.parametrize("text, position, token", [
    ("", 0, "<end>"),
    ("1+", 2, "<end>"),
    ("(1+x", 4, "<end>"),
    ("1+x)", 3, ")"),
    ("foo(x)", 0, "foo"),
    ("w+1", 0, "w"),
    ("pow(x)", 5, ")"),
    ("max(1,2,3)", 9, ")"),
    ("1 $ 2", 2, "$"),
    ("x y", 2, "y"),
    ("[a]", 0, "["),
])
def test_formula_errors_name_position_and_token(text, position, token):
    with pytest.raises(jec.FormulaError) as info:
        jec.Formula(text)
    assert info.value.position == position
    assert info.value.token == token
    assert repr(text) in str(info.value)


def test_formula_stack_depth_checked():
    nested = lambda k: "1" + "+(1" * k + ")" * k  # noqa: E731  (depth k + 1)
    assert jec.Formula(nested(K.STACK_SIZE - 1)).stack_depth == K.STACK_SIZE
    with pytest.raises(jec.FormulaError, match="stack"):
        jec.Formula(nested(K.STACK_SIZE))


def test_max_min_follow_std_semantics_on_nan():
    f = jec.Formula("max(0.0001,pow(x,0.5))+min(pow(x,0.5),0.0001)")
    ref = f.evaluate(np.zeros((1, 1)), [np.array([-1.0])])
    out = np.zeros(1)
    K.eval_formula_cpu(f.code_op, f.code_arg, np.zeros((1, 1)), np.array([[-1.0, 0, 0, 0]]), out)
    assert np.isnan(ref[0]) and np.isnan(out[0])  # max keeps 0.0001, min keeps the NaN
    g = jec.Formula("max(0.0001,pow(x,0.5))")
    assert g.evaluate(np.zeros((1, 1)), [np.array([-1.0])])[0] == 0.0001


# Random formulas: the tree printed with mixed spellings, parsed, then evaluated by the NumPy
# reference, the Numba interpreter, the CUDA interpreter (simulator off-GPU) and correctionlib.
_UNARY = ["exp", "log", "log10", "sqrt", "abs", "TMath::Erf", "erf", "TMath::Log", "atan",
          "tanh", "TMath::Abs"]
_BINARY_F = ["pow", "TMath::Power", "max", "min", "TMath::Max"]


def _expr(depth: int) -> st.SearchStrategy[str]:
    leaf = st.one_of(
        st.sampled_from(["x", "y", "[0]", "[1]", "[2]"]),
        st.floats(0.0, 50.0, allow_nan=False).map(lambda v: f"{v:.6g}"),
    )
    if depth == 0:
        return leaf
    sub = _expr(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(["+", "-", "*", "/"]), sub).map(
            lambda t: f"({t[0]}{t[1]}{t[2]})"),
        st.tuples(st.sampled_from(_UNARY), sub).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(_BINARY_F), sub, sub).map(lambda t: f"{t[0]}({t[1]},{t[2]})"),
        sub.map(lambda s: f"(-{s})"),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_expr(3), seed=st.integers(0, 2**32 - 1))
def test_random_formulas_agree_everywhere(text, seed):
    rng = np.random.default_rng(seed)
    f = jec.Formula(text)
    n = 64
    p = rng.uniform(-3.0, 3.0, 3)
    params = np.tile(p, (n, 1))
    xs = np.zeros((n, K.MAX_PAR_VARS))
    xs[:, :2] = rng.uniform(0.1, 20.0, (n, 2))
    ref = f.evaluate(params, [xs[:, 0], xs[:, 1]])
    cpu = np.zeros(n)
    K.eval_formula_cpu(f.code_op, f.code_arg, params, xs, cpu)
    _assert_same_values(cpu, ref, text)
    cuda = np.zeros(8)
    with np.errstate(all="ignore"):
        K.eval_formula_cuda[1, 8](f.code_op, f.code_arg, params[:8].copy(), xs[:8].copy(), cuda)
    _assert_same_values(cuda, ref[:8], text)

    pytest.importorskip("correctionlib")
    import correctionlib.schemav2 as cs

    expr = jec.correctionlib_expression(f, 2, clamp=False)
    corr = cs.Correction(
        name="f", version=1, output=cs.Variable(name="out", type="real"),
        inputs=[cs.Variable(name=v, type="real") for v in ("x", "y")],
        data=cs.Formula(nodetype="formula", expression=expr, parser="TFormula",
                        variables=["x", "y"], parameters=p.tolist()),
    )
    ev = cs.CorrectionSet(schema_version=2, corrections=[corr]).to_evaluator()["f"]
    theirs = ev.evaluate(xs[:, 0], xs[:, 1])
    _assert_same_values(ref, np.asarray(theirs), f"{text} (correctionlib: {expr})")


def _assert_same_values(a: np.ndarray, b: np.ndarray, what: str) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert np.array_equal(np.isnan(a), np.isnan(b)), what
    ok = ~np.isnan(a)
    np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-12, err_msg=what)


# ---------------------------------------------------------------------------------------------
# Text format
# ---------------------------------------------------------------------------------------------


def test_real_files_parse():
    summary = {p.name: jec.read_jec_text(p) for p in REAL_FILES}
    assert len(summary) == 8
    chs = summary["Summer16_07Aug2017_V11_L1fix_MC_L2Relative_AK4PFchs.jec.txt.gz"]
    assert (chs.n_rows, chs.bin_vars, chs.par_vars) == (2497, ("JetEta", "JetPt"), ("JetPt",))
    l1 = summary["Summer16_23Sep2016V3_MC_L1FastJet_AK4PFPuppi.jec.txt.gz"]
    assert (l1.name, l1.par_vars, l1.formulas[0].text) == \
        ("L1FastJet", ("Rho", "JetPt", "JetA"), "1")
    res = summary["Summer16_23Sep2016V3_MC_L2L3Residual_AK4PFPuppi.jec.txt.gz"]
    assert (res.name, res.header_level) == ("L2L3Residual", "L2Relative")  # name from the file
    single = summary["Autumn18_RunA_V19_DATA_L2Relative_AK4Calo.jec.txt"]
    assert single.n_rows == 1 and single.bin_hi[0].tolist() == [5.2, 6000.0]
    calo = summary["Fall17_17Nov2017_V32_MC_L2Relative_AK4Calo.jec.txt.gz"]
    assert calo.n_rows == 82 and calo.formulas[0].n_params == 8
    assert calo.var_lo[0, 0] == 7.1197 and calo.var_hi[0, 0] == 36.258


def test_gzipped_and_plain_read_the_same(tmp_path):
    src = JEC_DIR / "Fall17_17Nov2017_V32_MC_L2Relative_AK4Calo.jec.txt.gz"
    plain = tmp_path / "plain.txt"
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    a, b = jec.read_jec_text(src), jec.read_jec_text(plain)
    for field in ("bin_lo", "bin_hi", "var_lo", "var_hi", "params"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


HEADER = "{1 JetEta 1 JetPt max(0.0001,[0]+[1]*log(x)) Correction L2Relative}"
GOOD_ROW = "-5 5 4 10 100 1.0 0.1"


@pytest.mark.parametrize("text, line, token, reason", [
    ("", 1, "", "empty file"),
    ("# only a comment\n", 1, "", "empty file"),
    (GOOD_ROW + "\n", 1, "-5", "header"),
    ("{1 JetEta 1 JetPt 1 Correction L2Relative}\n", 1, "L2Relative}", "no rows"),
    ("{x JetEta 1 JetPt 1 Correction L2}\n" + GOOD_ROW, 1, "x", "number of binning"),
    ("{1 JetEtaa 1 JetPt 1 Correction L2}\n" + GOOD_ROW, 1, "JetEtaa", "supported: JetEta"),
    ("{1 JetEta 1 NPV 1 Correction L2}\n" + GOOD_ROW, 1, "NPV", "unsupported formula variable"),
    ("{1 JetEta 1 JetPt 1 Response L5Flavor}\n" + GOOD_ROW, 1, "Response", "Correction"),
    ("{1 JetEta 1 JetPt 1 Correction L2 extra}\n" + GOOD_ROW, 1, "extra", "three tokens"),
    ("{1 JetEta 1 JetPt max(0.0001,[0]+) Correction L2}\n" + GOOD_ROW, 1, ")", "formula"),
    ("{1 JetEta 1 JetPt [0]*y Correction L2}\n" + GOOD_ROW, 1, "y", "variable y"),
    ("{1 JetEta 1 JetPt foo(x) Correction L2}\n" + GOOD_ROW, 1, "foo", "unknown name"),
    (HEADER + "\n" + GOOD_ROW + "\n-5 5 4 10 1OO 1.0 0.1\n", 3, "1OO", "not a number"),
    (HEADER + "\n\n-5 5 4 10 100 1.0\n", 3, "4", "count says 4"),
    (HEADER + "\n-5 5 4 10 100 1.0 0.1 7\n", 2, "7", "count says 4"),
    (HEADER + "\n-5 5 3 10 100 1.0\n", 2, "3", "too few"),
    (HEADER + "\n-5 5 2.5 10 100\n", 2, "2.5", "integer"),
    (HEADER + "\n-5 5 4 10 nan 1.0 0.1\n", 2, "nan", "NaN"),
    (HEADER + "\n-5 5\n", 2, "5", "bin bounds and a count"),
])
def test_malformed_files_name_file_line_and_token(tmp_path, text, line, token, reason):
    path = tmp_path / "Broken_L2Relative_AK4X.txt"
    path.write_text(text)
    with pytest.raises(jec.JecFormatError) as info:
        jec.read_jec_text(path)
    err = info.value
    assert err.source == str(path) and str(path) in str(err)
    assert err.line == line, str(err)
    assert err.token == token, str(err)
    assert reason in str(err)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(jec.JecError, match="does not exist"):
        jec.read_jec_text(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(jec.JecError, match="gzip"):
        jec.read_jec_text(bad)


def test_sections(tmp_path):
    text = (f"# comment\n[AK4A]\n{HEADER}\n{GOOD_ROW}\n[AK4B]\n"
            "{1 JetEta 1 JetPt [0] Correction L2Relative}\n-5 5 3 0 10 2.5\n")
    path = tmp_path / "multi.txt"
    path.write_text(text)
    assert jec.read_jec_text(path, "AK4B").params[0, 0] == 2.5
    assert jec.load_level(f"{path}#AK4A")[0].params[0].tolist() == [1.0, 0.1]
    with pytest.raises(jec.JecFormatError, match="choose one"):
        jec.read_jec_text(path)
    with pytest.raises(jec.JecFormatError, match="no section"):
        jec.read_jec_text(path, "AK8")


def test_first_matching_row_wins_and_no_row_gives_one():
    text = ("{2 JetEta JetPt 1 JetPt [0] Correction L2Relative}\n"
            "0 1 0 10 3 0 1000 2.0\n"
            "0 1 5 20 3 0 1000 3.0\n"  # overlaps the first row for 5 <= pt < 10
            "2 3 0 10 3 0 1000 4.0\n")  # gap 1 <= eta < 2
    lv = jec.parse_jec_text(text, "t")
    eta = np.array([0.5, 0.5, 0.5, 1.5, 2.0, 3.0, -1.0, 0.0, 1.0])
    pt = np.array([5.0, 9.99, 10.0, 5.0, 0.0, 5.0, 5.0, 20.0, 5.0])
    expected = [2.0, 2.0, 3.0, 1.0, 4.0, 1.0, 1.0, 1.0, 1.0]
    vals = {"JetEta": eta, "JetPt": pt}
    assert lv.evaluate(vals).tolist() == expected
    chain = jec.JecChain([lv])
    cpu = _kernel_factors(chain, vals, "cpu")
    assert cpu[:, 0].tolist() == expected


def test_clamping_as_cmssw():
    text = ("{1 JetEta 2 JetPt Rho [0]*x+[1]*y Correction L1FastJet}\n"
            "-5 5 6 10 100 0 40 1.0 1000.0\n")
    lv = jec.parse_jec_text(text, "t")
    vals = {"JetEta": np.zeros(4), "JetPt": np.array([5.0, 50.0, 500.0, 50.0]),
            "Rho": np.array([-1.0, 20.0, 50.0, 40.0])}
    expected = [10.0 + 0.0, 50.0 + 20000.0, 100.0 + 40000.0, 50.0 + 40000.0]
    assert lv.evaluate(vals).tolist() == expected
    assert _kernel_factors(jec.JecChain([lv]), vals, "cpu")[:, 0].tolist() == expected


def _kernel_factors(chain: jec.JecChain, vals, backend: str) -> np.ndarray:
    n = len(vals["JetPt"])
    mat = jec.values_matrix(vals, n)
    factors = np.ones((n, len(chain)))
    if backend == "cpu":
        K.correct_jets_cpu(mat, *chain.tables(), factors)
    else:
        with np.errstate(all="ignore"):
            K.correct_jets_cuda[(n + 31) // 32, 32](mat, *chain.tables(), factors)
    return factors


# ---------------------------------------------------------------------------------------------
# Real files against correctionlib (and coffea)
# ---------------------------------------------------------------------------------------------


def oracle_points(levels, n_random: int, seed: int) -> dict[str, np.ndarray]:
    """Random jets, plus for every row its bin edges and clamp bounds (exactly and one ulp to
    either side) with the row's other binning variables at the centre of its bins."""
    rng = np.random.default_rng(seed)
    cols = {
        "JetEta": rng.uniform(-5.6, 5.6, n_random),
        "JetPt": np.exp(rng.uniform(np.log(0.5), np.log(2e4), n_random)),
        "Rho": rng.uniform(-5.0, 260.0, n_random),
        "JetA": rng.uniform(-0.5, 12.0, n_random),
        "JetPhi": rng.uniform(-math.pi, math.pi, n_random),
        "JetE": np.exp(rng.uniform(0.0, np.log(3e4), n_random)),
    }
    parts = [cols]
    for lv in levels:
        centres = {v: 0.5 * (lv.bin_lo[:, b] + lv.bin_hi[:, b]) for b, v in enumerate(lv.bin_vars)}
        targets = [(v, lv.bin_lo[:, b], lv.bin_hi[:, b]) for b, v in enumerate(lv.bin_vars)]
        targets += [(v, lv.var_lo[:, k], lv.var_hi[:, k]) for k, v in enumerate(lv.par_vars)]
        for var, lo, hi in targets:
            vals = np.concatenate([lo, hi, np.nextafter(lo, -np.inf), np.nextafter(lo, np.inf),
                                   np.nextafter(hi, -np.inf), np.nextafter(hi, np.inf)])
            block = {k: rng.choice(c, vals.shape[0]) for k, c in cols.items()}
            block.update({v: np.tile(c, 6) for v, c in centres.items()})
            block[var] = vals
            parts.append(block)
    return {k: np.concatenate([p[k] for p in parts]) for k in cols}


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


#: cpu kernel and NumPy reference against correctionlib and the hand-written oracle below: the
#: same float64 operations in the same order; measured: 3.6e-15 at most (libm's and NumPy's
#: erf/log10/exp may differ in the last bit).
RTOL_CPU = 1e-12
#: cuda kernel against the reference: measured on an NVIDIA H200, 3.3e-15 at most (CUDA's
#: libdevice log10/exp/erf/pow against the C library's); 10x that, rounded up.  Under the CUDA
#: simulator the kernel runs Python's math functions, which agree to ~1e-15.
RTOL_CUDA = 5e-14


def _cuda_rows(n: int) -> np.ndarray:
    """All points on a GPU; a spread of 2,048 (random and bin-edge points alike) under the
    simulator, which runs one Python call per thread."""
    if not cuda_usable():
        return np.zeros(0, dtype=np.int64)
    if cuda_simulator_enabled():
        return np.unique(np.linspace(0, n - 1, 2048).astype(np.int64))
    return np.arange(n)


# -- an independent oracle: the CMS text format read and evaluated here, by hand ---------------
def _std_max(a, b):
    """std::max(a, b) = (a < b) ? b : a, as CMSSW's formulas (a NaN b gives a)."""
    return np.where(a < b, b, a)


def _erf(a: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf  # Cephes: not the C library's erf that hltemu calls
    except ImportError:  # pragma: no cover - scipy comes with coffea
        return np.array([math.erf(v) for v in a], dtype=np.float64)
    return erf(a)


#: The formulas of the real files, written out in NumPy (x: the clamped formula variable,
#: p: the row's parameters), operation for operation as in the text.
HAND_FORMULAS = {
    "1": lambda p, x: np.ones(p.shape[0]),
    # Fall17 calo L2Relative: erf and power in log10(pT)
    "max(0.0001,[0]+[1]*TMath::Erf([2]*(log10(x)-[3]))+[4]*exp([5]*pow((log10(x)-[6]),[7])))":
        lambda p, x: _std_max(0.0001, p[:, 0] + p[:, 1] * _erf(p[:, 2] * (np.log10(x[0]) - p[:, 3]))
                              + p[:, 4] * np.exp(p[:, 5] * np.power(np.log10(x[0]) - p[:, 6],
                                                                    p[:, 7]))),
    # Summer16 PF L2Relative: a cubic in pT per bin
    "max(0.0001,[0]+((x-[1])*([2]+((x-[1])*([3]+((x-[1])*[4]))))))":
        lambda p, x: _std_max(0.0001, p[:, 0] + ((x[0] - p[:, 1]) * (p[:, 2] + ((x[0] - p[:, 1]) * (
            p[:, 3] + ((x[0] - p[:, 1]) * p[:, 4])))))),
}


def hand_correction(path: Path, values) -> np.ndarray:
    """The factor of the CMS JEC text file ``path`` at ``values``, as CMSSW's
    JetCorrectorParameters / SimpleJetCorrector define it: header ``{N binvars M parvars formula
    Correction level}``; rows ``lo hi`` per binning variable, a count K, K numbers: ``lo hi`` per
    formula variable (clamp range), then the parameters; the first row in file order with
    ``lo <= v < hi`` in every binning variable; formula variables clamped into their range; 1
    where no row contains the point."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = [ln.split() for ln in raw.decode().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    head = " ".join(lines[0]).strip("{}").split()
    nb = int(head[0])
    bin_vars = head[1:1 + nb]
    nv = int(head[1 + nb])
    par_vars = head[2 + nb:2 + nb + nv]
    formula, kind = head[2 + nb + nv], head[3 + nb + nv]
    assert kind == "Correction" and len(head) == 5 + nb + nv, head
    n = len(values["JetPt"])
    out, todo = np.ones(n), np.ones(n, dtype=bool)
    for line in lines[1:]:
        row = [float(t) for t in line]
        assert len(row) == 2 * nb + 1 + int(row[2 * nb]), line
        inside = todo.copy()
        for b, v in enumerate(bin_vars):
            inside &= (values[v] >= row[2 * b]) & (values[v] < row[2 * b + 1])
        if not inside.any():
            continue
        todo &= ~inside
        rest = row[2 * nb + 1:]
        xs = [np.minimum(np.maximum(np.asarray(values[v])[inside], rest[2 * j]), rest[2 * j + 1])
              for j, v in enumerate(par_vars)]
        params = np.tile(np.asarray(rest[2 * nv:], dtype=np.float64), (int(inside.sum()), 1))
        out[inside] = HAND_FORMULAS[formula](params, xs)
    return out


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_real_file_equals_correctionlib(tmp_path, path):
    """Every real file at 100,000 random points plus every row's bin edges and clamp bounds:
    the NumPy reference and the cpu kernel against the hand-written oracle (the text read and
    evaluated independently of hltemu) and against correctionlib evaluating the JSON hltemu
    writes, to RTOL_CPU; the cuda kernel against the reference to RTOL_CUDA."""
    lv = jec.read_jec_text(path)
    ev, cset = correctionlib_evaluator(tmp_path, [lv])
    corr = ev[cset["corrections"][0]["name"]]
    pts = oracle_points([lv], N_POINTS, seed=len(path.name))
    n = pts["JetPt"].shape[0]
    assert n >= N_POINTS
    hand = hand_correction(path, pts)
    theirs = corr.evaluate(*[pts[v] for v in lv.variables])
    ref = lv.evaluate(pts)
    cpu = _kernel_factors(jec.JecChain([lv]), pts, "cpu")[:, 0]
    assert relative_difference(ref, hand) <= RTOL_CPU
    assert relative_difference(cpu, hand) <= RTOL_CPU
    assert relative_difference(theirs, hand) <= RTOL_CPU
    assert relative_difference(ref, theirs) <= RTOL_CPU
    assert relative_difference(cpu, theirs) <= RTOL_CPU
    assert relative_difference(cpu, ref) <= RTOL_CPU
    rows = _cuda_rows(n)
    if rows.size:
        sub = {k: v[rows] for k, v in pts.items()}
        cuda = _kernel_factors(jec.JecChain([lv]), sub, "cuda")[:, 0]
        assert relative_difference(cuda, ref[rows]) <= RTOL_CUDA
        assert relative_difference(cuda, hand[rows]) <= RTOL_CUDA
    # the points do reach every row (none of the real files is only its edges)
    assert np.unique(lv.find_rows(pts)).size == lv.n_rows + (lv.find_rows(pts) < 0).any()
    # and the files whose formula is not "1" are not one everywhere
    if lv.formulas[0].text != "1":
        assert (hand != 1.0).mean() > 0.5


def test_puppi_chain_equals_correctionlib_compound(tmp_path):
    """The four PUPPI levels in sequence (each level sees the pT the previous ones corrected):
    reference and cpu against the hand-written oracle applied level by level and against
    correctionlib's compound correction, to RTOL_CPU; cuda to RTOL_CUDA."""
    levels = [jec.read_jec_text(p) for p in PUPPI]
    ev, cset = correctionlib_evaluator(tmp_path, levels, compound="L1L2L3Res")
    chain = jec.JecChain(levels)
    pts = oracle_points(levels, N_POINTS // 4, seed=7)
    compound = ev.compound["L1L2L3Res"]
    theirs = compound.evaluate(*[pts[i["name"]] for i in cset["compound_corrections"][0]["inputs"]])
    hand_vals = dict(pts)
    hand = np.ones((pts["JetPt"].shape[0], len(PUPPI)))
    for i, path in enumerate(PUPPI):
        hand[:, i] = hand_correction(path, hand_vals)
        hand_vals["JetPt"] = hand_vals["JetPt"] * hand[:, i]
    pt, energy, factors = chain.correct_reference(pts)
    total = np.prod(factors, axis=1)
    assert relative_difference(factors, hand) <= RTOL_CPU
    assert relative_difference(total, theirs) <= RTOL_CPU
    assert relative_difference(np.prod(hand, axis=1), theirs) <= RTOL_CPU
    np.testing.assert_allclose(pt, hand_vals["JetPt"], rtol=1e-14)
    np.testing.assert_allclose(pt, pts["JetPt"] * total, rtol=1e-14)
    np.testing.assert_allclose(energy, pts["JetE"] * total, rtol=1e-14)
    cpu = _kernel_factors(chain, pts, "cpu")
    assert relative_difference(cpu, factors) <= RTOL_CPU
    assert relative_difference(cpu, hand) <= RTOL_CPU
    rows = _cuda_rows(pts["JetPt"].shape[0])
    if rows.size:
        cuda = _kernel_factors(chain, {k: v[rows] for k, v in pts.items()}, "cuda")
        assert relative_difference(cuda, factors[rows]) <= RTOL_CUDA
    assert chain.names == ["L1FastJet", "L2Relative", "L3Absolute", "L2L3Residual"]
    assert (factors[:, 1] != 1.0).mean() > 0.5


def test_real_files_equal_coffea(tmp_path):
    """coffea reads the text files itself (float32 tables, as CMSSW): compare with float32-rounded
    tables, inside the rows (coffea extends edge bins instead of returning 1) and away from
    overlapping rows (coffea does not keep CMS's first match)."""
    pytest.importorskip("coffea")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from coffea.jetmet_tools import FactorizedJetCorrector
        from coffea.lookup_tools import extractor

    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    for path in REAL_FILES:
        lv = jec.read_jec_text(path)
        name = f"Era_Campaign_MC_{lv.name}_AK4X"  # coffea reads level and jet type from names
        copy = tmp_path / (f"{name}.jec.txt" + (".gz" if path.suffix == ".gz" else ""))
        shutil.copy(path, copy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ext = extractor()
            ext.add_weight_sets([f"* * {copy}"])
            ext.finalize()
            corrector = FactorizedJetCorrector(**{name: ext.make_evaluator()[name]})
            pts = oracle_points([lv], 20_000, seed=3)
            theirs = np.asarray(corrector.getCorrection(**{k: pts[k] for k in corrector.signature}))
        lv32 = dataclasses.replace(lv, bin_lo=f32(lv.bin_lo), bin_hi=f32(lv.bin_hi),
                                   var_lo=f32(lv.var_lo), var_hi=f32(lv.var_hi),
                                   params=f32(lv.params))
        ours = lv32.evaluate(pts)
        inside = np.zeros(pts["JetPt"].shape[0], dtype=np.int64)
        for r in range(lv.n_rows):
            ok = np.ones_like(inside, dtype=bool)
            for b, v in enumerate(lv.bin_vars):
                ok &= (pts[v] >= lv32.bin_lo[r, b]) & (pts[v] < lv32.bin_hi[r, b])
            inside += ok
        keep = inside == 1
        assert keep.mean() > 0.7, path.name
        assert relative_difference(ours[keep], theirs[keep]) <= 1e-12, path.name


# ---------------------------------------------------------------------------------------------
# correctionlib JSON
# ---------------------------------------------------------------------------------------------


def test_json_round_trip_reproduces_the_text_files(tmp_path):
    levels = [jec.read_jec_text(p) for p in REAL_FILES]
    path = tmp_path / "all.json.gz"
    jec.write_correctionlib(path, levels, compound="everything")
    pts = oracle_points(levels[:1], 20_000, seed=5)
    for lv in levels:
        back = jec.read_correctionlib(path, jec.correction_name(lv))
        assert len(back) == 1 and back[0].name == lv.name
        np.testing.assert_allclose(back[0].evaluate(pts), lv.evaluate(pts), rtol=1e-14)
    stack = jec.read_correctionlib(path, "everything")
    assert [s.name for s in stack] == [lv.name for lv in levels]
    # a second trip (clamps already inside the formulas) changes nothing
    again = tmp_path / "again.json"
    jec.write_correctionlib(again, stack)
    for lv in stack:
        (lv2,) = jec.read_correctionlib(again, jec.correction_name(lv))
        np.testing.assert_array_equal(lv2.evaluate(pts), lv.evaluate(pts))


def _write_json(tmp_path: Path, data, inputs=("JetEta", "JetPt"), generic=None,
                name="Test_L2Relative"):
    corr = {"name": name, "version": 1,
            "inputs": [{"name": i, "type": "real"} for i in inputs],
            "output": {"name": "out", "type": "real"}, "data": data}
    if generic is not None:
        corr["generic_formulas"] = generic
    path = tmp_path / "hand.json"
    path.write_text(json.dumps({"schema_version": 2, "corrections": [corr]}))
    return path


def test_reading_handwritten_correctionlib_json(tmp_path):
    correctionlib = pytest.importorskip("correctionlib")
    data = {
        "nodetype": "binning", "input": "JetEta", "edges": [-2.0, 0.0, 2.0], "flow": "clamp",
        "content": [
            {"nodetype": "multibinning", "inputs": ["JetPt", "Rho"],
             "edges": [[10.0, 50.0, 100.0], {"n": 2, "low": 0.0, "high": 40.0}], "flow": "error",
             "content": [1.5, 1.25,
                         {"nodetype": "formula", "expression": "1+[0]*log(x)+y*[1]",
                          "parser": "TFormula", "variables": ["JetPt", "Rho"],
                          "parameters": [0.01, 0.001]},
                         {"nodetype": "formularef", "index": 0, "parameters": [0.5]}]},
            {"nodetype": "binning", "input": "JetPt", "edges": [0.0, 30.0], "flow": 0.75,
             "content": [{"nodetype": "formularef", "index": 0, "parameters": [2.0]}]},
        ],
    }
    generic = [{"nodetype": "formula", "expression": "[0]*sqrt(x)", "parser": "TFormula",
                "variables": ["JetPt"]}]
    path = _write_json(tmp_path, data, ("JetEta", "JetPt", "Rho"), generic)
    (lv,) = jec.read_correctionlib(path)
    ev = correctionlib.CorrectionSet.from_file(str(path))["Test_L2Relative"]
    rng = np.random.default_rng(1)
    n = 5000
    pts = {"JetEta": rng.uniform(-4, 4, n), "JetPt": rng.uniform(10, 99.9, n),
           "Rho": rng.uniform(0, 39.9, n)}
    inside_multi = pts["JetEta"] < 0.0
    ref = lv.evaluate(pts)
    theirs = ev.evaluate(pts["JetEta"], pts["JetPt"], pts["Rho"])
    np.testing.assert_allclose(ref, theirs, rtol=1e-14)
    # outside a flow="error" binning correctionlib raises; hltemu gives 1, as CMS
    out = {"JetEta": np.array([-1.0]), "JetPt": np.array([500.0]), "Rho": np.array([1.0])}
    assert lv.evaluate(out)[0] == 1.0
    assert inside_multi.any() and (~inside_multi).any()
    cpu = _kernel_factors(jec.JecChain([lv]), pts, "cpu")[:, 0]
    np.testing.assert_allclose(cpu, ref, rtol=1e-12)


@pytest.mark.parametrize("data, message", [
    ({"nodetype": "category", "input": "JetEta", "content": []}, "unsupported node type"),
    ({"nodetype": "formularef", "index": 3, "parameters": []}, "index out of range"),
    ({"nodetype": "binning", "input": "JetPhi", "edges": [0, 1], "content": [1.0],
      "flow": "clamp"}, "not an input"),
    ({"nodetype": "binning", "input": "JetEta", "edges": [0, 1, 2], "content": [1.0],
      "flow": "clamp"}, "need 2 contents"),
    ({"nodetype": "formula", "expression": "x+", "parser": "TFormula", "variables": ["JetPt"]},
     "formula"),
    ({"nodetype": "formula", "expression": "x+[2]", "parser": "TFormula", "variables": ["JetPt"],
      "parameters": [1.0]}, "3 parameters"),
])
def test_bad_correctionlib_json(tmp_path, data, message):
    path = _write_json(tmp_path, data)
    with pytest.raises(jec.JecFormatError, match=message) as info:
        jec.read_correctionlib(path)
    assert str(path) in str(info.value)


def test_correctionlib_file_level_errors(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"schema_version": 1, "corrections": []}')
    with pytest.raises(jec.JecFormatError, match="schema_version 2"):
        jec.read_correctionlib(p)
    p.write_text('{"schema_version": 2,\n "corrections": [}')
    with pytest.raises(jec.JecFormatError, match="not JSON") as info:
        jec.read_correctionlib(p)
    assert info.value.line == 2
    path = tmp_path / "two.json"
    jec.write_correctionlib(path, [jec.read_jec_text(p) for p in PUPPI[:2]])
    with pytest.raises(jec.JecFormatError, match="several corrections"):
        jec.read_correctionlib(path)
    with pytest.raises(jec.JecFormatError, match="available"):
        jec.load_level(f"{path}#nope")
    bad_input = _write_json(tmp_path, 1.0, inputs=("JetEta", "systematic"))
    with pytest.raises(jec.JecFormatError, match="unsupported input"):
        jec.read_correctionlib(bad_input)


# ---------------------------------------------------------------------------------------------
# Kernels across backends, and the stage
# ---------------------------------------------------------------------------------------------


def test_cuda_kernel_matches_reference_on_real_files():
    levels = [jec.read_jec_text(p) for p in REAL_FILES]
    chain = jec.JecChain(levels)
    pts = oracle_points([], 300, seed=11)
    ref = chain.correct_reference(pts)[2]
    cuda = _kernel_factors(chain, pts, "cuda")
    assert relative_difference(cuda, ref) <= RTOL_CUDA
    assert (ref != 1.0).any()


def make_jets(rng: np.random.Generator, n_events: int, max_jets: int = 8) -> Collection:
    counts = rng.integers(0, max_jets + 1, n_events)
    m = int(counts.sum())
    pt = np.exp(rng.uniform(np.log(3.0), np.log(2000.0), m))
    eta = rng.uniform(-5.5, 5.5, m)
    phi = rng.uniform(-math.pi, math.pi, m)
    mass = rng.uniform(0.0, 0.2, m) * pt
    pz = pt * np.sinh(eta)
    return Collection.from_counts(counts, {
        "pt": pt, "eta": eta, "phi": phi, "mass": mass, "px": pt * np.cos(phi),
        "py": pt * np.sin(phi), "pz": pz, "E": np.sqrt(pt**2 + pz**2 + mass**2),
        "area": rng.uniform(0.3, 0.8, m), "n_constituents": rng.integers(1, 40, m),
    })


def run_jec(backend, jets: Collection, rho: np.ndarray, cfg: JecConfig) -> Collection:
    be = get_backend(backend)
    batch = EventBatch(be, jets.n_events, {
        "jets": jets.to(be), "rho": Collection.event_level({"rho": rho}).to(be)})
    out = get_stage("jec")(batch, cfg)["corrected_jets"]
    return out.to_host()


PUPPI_CFG = JecConfig(levels=tuple(str(p) for p in PUPPI))


@pytest.mark.parametrize("cfg", [JecConfig(), PUPPI_CFG,
                                 JecConfig(levels=(str(REAL_FILES[3]), str(PUPPI[0])))],
                         ids=["default", "puppi-chain", "pfchs+l1"])
def test_stage_agrees_across_backends(backend, cfg):
    rng = np.random.default_rng(4)
    n_events = 12 if backend.name == "cuda" else 300
    jets = make_jets(rng, n_events)
    rho = rng.uniform(0.0, 60.0, n_events)
    ref = run_jec("reference", jets, rho, cfg)
    got = run_jec(backend, jets, rho, cfg)
    assert sorted(got.columns) == sorted(ref.columns)
    np.testing.assert_array_equal(got.offsets, jets.offsets)
    for name, col in ref.columns.items():
        np.testing.assert_allclose(got[name], col, rtol=1e-12, err_msg=name)


def test_stage_output_columns():
    rng = np.random.default_rng(5)
    jets = make_jets(rng, 50)
    out = run_jec("cpu", jets, rng.uniform(0, 40, 50), PUPPI_CFG)
    assert {"factor_L1FastJet", "factor_L2Relative", "factor_L3Absolute",
            "factor_L2L3Residual", "factor", "pt_raw"} <= set(out.columns)
    np.testing.assert_array_equal(out["pt_raw"], jets["pt"])
    np.testing.assert_array_equal(out["n_constituents"], jets["n_constituents"])
    np.testing.assert_array_equal(out["eta"], jets["eta"])
    np.testing.assert_allclose(out["pt"], jets["pt"] * out["factor"], rtol=1e-14)
    for c in ("E", "mass", "px", "py", "pz"):
        np.testing.assert_allclose(out[c], jets[c] * out["factor"], rtol=1e-14)
    product = (out["factor_L1FastJet"] * out["factor_L2Relative"] * out["factor_L3Absolute"]
               * out["factor_L2L3Residual"])
    np.testing.assert_allclose(out["factor"], product, rtol=1e-15)
    # the L2Relative factor is the file's, at the pt the (unit) L1 left
    l2 = jec.read_jec_text(PUPPI[1])
    expect = l2.evaluate({"JetEta": jets["eta"], "JetPt": jets["pt"]})
    np.testing.assert_allclose(out["factor_L2Relative"], expect, rtol=1e-14)
    assert (out["factor_L2Relative"] != 1).mean() > 0.5


def test_identity_chain_and_empty_batches():
    rng = np.random.default_rng(6)
    jets = make_jets(rng, 20)
    out = run_jec("cpu", jets, np.zeros(20), JecConfig(levels=()))
    np.testing.assert_array_equal(out["pt"], jets["pt"])
    assert (out["factor"] == 1).all()
    empty = Collection.from_counts(np.zeros(3, dtype=np.int64),
                                   {k: np.zeros(0) for k in jets.columns})
    for b in ("reference", "cpu"):
        got = run_jec(b, empty, np.zeros(3), PUPPI_CFG)
        assert got.size == 0 and got.n_events == 3


def test_stage_errors():
    rng = np.random.default_rng(7)
    jets = make_jets(rng, 5)
    with pytest.raises(ConfigError, match="does not exist"):
        run_jec("cpu", jets, np.zeros(5), JecConfig(levels=("/no/such/file.txt",)))
    with pytest.raises(ConfigError, match="no built-in correction"):
        run_jec("cpu", jets, np.zeros(5), JecConfig(levels=("builtin:nope.txt",)))
    no_area = Collection(jets.offsets, {k: v for k, v in jets.columns.items() if k != "area"})
    with pytest.raises(PipelineError, match="JetA.*'area'"):
        run_jec("cpu", no_area, np.zeros(5), PUPPI_CFG)


def test_config_table_reads_levels(tmp_path):
    toml = tmp_path / "hlt.toml"
    toml.write_text(f'[jec]\nlevels = ["{PUPPI[0]}", "{PUPPI[1]}"]\n')
    cfg = load_config(toml)["jec"]
    assert cfg.levels == (str(PUPPI[0]), str(PUPPI[1]))
    assert jec.load_chain(cfg.levels).names == ["L1FastJet", "L2Relative"]
    # the default: the emulator's own corrections (hltemu derive-jec), 4 and 8 |eta| bins a side
    default = jec.load_chain(JecConfig().levels)
    assert default.names == ["L1FastJet", "L2Relative"]
    assert [lv.n_rows for lv in default.levels] == [8, 16]


@pytest.mark.parametrize("cfg", [PUPPI_CFG, JecConfig(levels=(str(REAL_FILES[3]),))],
                         ids=["puppi-chain", "pfchs"])
def test_pythia_jets_agree_across_backends(backend, cfg):
    """FastJet anti-kT jets of the built-in Pythia ttbar + pileup sample."""
    from pythia_inputs import sample_jets

    jets = sample_jets()
    rho = np.random.default_rng(8).uniform(10.0, 40.0, jets.n_events)
    if backend.name == "cuda":
        jets, rho = jets.select_events(0, 1), rho[:1]
    ref = run_jec("reference", jets, rho, cfg)
    got = run_jec(backend, jets, rho, cfg)
    for name, col in ref.columns.items():
        np.testing.assert_allclose(got[name], col, rtol=1e-12, err_msg=name)
    assert (ref["factor"] != 1.0).mean() > 0.9
