"""JEC evaluation speed: hltemu reference (NumPy), cpu (Numba), cuda (on a GPU) and correctionlib.

One run compares them on the same jets and the same real CMS correction files::

    python -m pytest benchmarks/bench_jec.py --benchmark-group-by=param:level

Each result carries ``jets_per_second`` in its ``extra_info`` (also in ``--benchmark-json``).
correctionlib evaluates the JSON that :func:`hltemu.jec.write_correctionlib` writes from the
same text file (its own binning and TFormula evaluation, vectorised over NumPy arrays).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _common import skip_unless_gpu
from hltemu.kernels import jec as K

from hltemu import jec
from hltemu.backends import get_backend

JEC_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "jec"
LEVELS = {
    # 82 eta bins, erf-and-power formula
    "calo-L2Relative": "Fall17_17Nov2017_V32_MC_L2Relative_AK4Calo.jec.txt.gz",
    # 2497 (eta, pt) bins, cubic in pt
    "pfchs-L2Relative": "Summer16_07Aug2017_V11_L1fix_MC_L2Relative_AK4PFchs.jec.txt.gz",
}
N_JETS = 200_000
ENGINES = ["reference", "cpu", "cuda", "correctionlib"]


def _jets(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"JetEta": rng.uniform(-5.0, 5.0, n),
            "JetPt": np.exp(rng.uniform(np.log(10.0), np.log(3000.0), n))}


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("engine", ENGINES)
def test_jec_evaluation(benchmark, engine, level, tmp_path):
    lv = jec.read_jec_text(JEC_DIR / LEVELS[level])
    chain = jec.JecChain([lv])
    jets = _jets(N_JETS)
    n = N_JETS
    benchmark.group = f"jec {level}"

    if engine == "reference":
        result = benchmark(lv.evaluate, jets)
    elif engine == "cpu":
        mat = jec.values_matrix(jets, n)
        factors = np.ones((n, 1))
        tables = chain.tables()
        K.correct_jets_cpu(mat.copy(), *tables, factors)  # compile outside the timing
        benchmark.pedantic(K.correct_jets_cpu, setup=lambda: ((mat.copy(), *tables, factors), {}),
                           rounds=20)
        result = factors[:, 0]
    elif engine == "cuda":
        skip_unless_gpu("cuda")
        be = get_backend("cuda")
        xp = be.xp
        mat = xp.asarray(jec.values_matrix(jets, n))
        factors = xp.ones((n, 1))
        tables = chain.device_tables(be)
        threads = 128
        blocks = (n + threads - 1) // threads

        def run(m):
            K.correct_jets_cuda[blocks, threads](m, *tables, factors)
            be.synchronize()

        run(mat.copy())
        benchmark.pedantic(run, setup=lambda: ((mat.copy(),), {}), rounds=20)
        result = be.to_host(factors)[:, 0]
    else:
        correctionlib = pytest.importorskip("correctionlib")
        path = tmp_path / "jec.json"
        cset = jec.write_correctionlib(path, [lv])
        corr = correctionlib.CorrectionSet.from_file(str(path))[cset["corrections"][0]["name"]]
        args = [jets[v] for v in lv.variables]
        result = benchmark(corr.evaluate, *args)

    np.testing.assert_allclose(result, lv.evaluate(jets), rtol=1e-9)
    benchmark.extra_info["jets"] = n
    benchmark.extra_info["jets_per_second"] = n / benchmark.stats.stats.mean
