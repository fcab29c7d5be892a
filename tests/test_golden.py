"""Golden test: every output branch of ``hltemu run`` on the built-in sample, reference and cpu.

The recorded values (``tests/data/golden_sample.npz``) were made with ``python
tests/test_golden.py`` at commit 039aca0, before the architecture change (one shape for every
stage, io/ and jec/ packages) that must leave every product unchanged.  Regenerated when the
sample was remade with NanoAOD's event identifiers (the same events): ``Event_event`` gave way
to ``run``, ``luminosityBlock``, ``event`` and ``Event_weight``; the ``genjets_*`` branches
then took in the hard-scatter default of genjets (commit 13e9b58); nothing else moved.  Integer,
boolean and float32 branches must be bit-identical (a SHA-256 of their flattened bytes and of
the per-event counts; float32 columns are float64 results rounded once, so a change below 1e-12
relative does not move them); float64 branches are stored whole and must agree to 1e-12
relative.  The run writes every product whole (``--keep '*'``: the default output has only
the doublets' counts).  A change that alters products on purpose regenerates the file in the same commit
and says why in its message.
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_sample.npz"
SAMPLE = Path(str(resources.files("hltemu") / "data" / "sample.root"))
BACKENDS = ("reference", "cpu")
RTOL = 1e-12


def _run(backend: str, out: Path) -> dict[str, np.ndarray]:
    """Run the default chain on the sample; every branch of the output, flattened, plus the
    per-event counts of jagged branches (``<branch>.counts``)."""
    import awkward as ak
    import uproot

    from hltemu.pipeline import run_files

    run_files([SAMPLE], backend=backend, output=out, keep=("*",))  # every product whole
    branches: dict[str, np.ndarray] = {}
    with uproot.open(out) as f:
        tree = f["Events"]
        for name in tree.keys():
            arr = tree[name].array(library="ak")
            if arr.ndim > 1:
                branches[f"{name}.counts"] = ak.to_numpy(ak.num(arr, axis=1)).astype(np.int64)
                arr = ak.flatten(arr, axis=1)
            branches[name] = ak.to_numpy(arr)
    return branches


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.dtype.newbyteorder("<").str.encode()
                          + a.astype(a.dtype.newbyteorder("<")).tobytes()).hexdigest()


def _summarise(branches: dict[str, np.ndarray]) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """``(digests, float64 arrays)`` of one run."""
    digests, floats = {}, {}
    for name, a in branches.items():
        if a.dtype == np.float64:
            floats[name] = a
        else:
            digests[name] = f"{a.dtype.str}:{a.shape[0]}:{_digest(a)}"
    return digests, floats


def regenerate(path: Path = GOLDEN) -> None:
    import tempfile

    payload: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for be in BACKENDS:
            digests, floats = _summarise(_run(be, Path(tmp) / f"{be}.root"))
            payload[f"{be}/digests"] = np.array(json.dumps(digests, sort_keys=True))
            payload.update({f"{be}/{k}": v for k, v in floats.items()})
    np.savez_compressed(path, **payload)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    assert GOLDEN.is_file(), f"golden file missing: {GOLDEN} (python tests/test_golden.py)"
    with np.load(GOLDEN) as g:
        return {k: g[k] for k in g.files}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_output_branch_is_unchanged(backend, golden, tmp_path):
    digests, floats = _summarise(_run(backend, tmp_path / "out.root"))
    want_digests = json.loads(str(golden[f"{backend}/digests"]))
    want_floats = {k.split("/", 1)[1]: v for k, v in golden.items()
                   if k.startswith(f"{backend}/") and not k.endswith("/digests")}
    assert sorted(digests) + sorted(floats) == sorted(want_digests) + sorted(want_floats), \
        "the set of output branches changed"
    changed = [k for k, v in digests.items() if want_digests[k] != v]
    assert not changed, f"{backend}: integer/bool/float32 branches changed: {changed}"
    for name, want in want_floats.items():
        np.testing.assert_allclose(floats[name], want, rtol=RTOL, atol=0,
                                   err_msg=f"{backend} {name}")


def test_golden_covers_every_stage(golden):
    """The recording holds the products of every stage of the default chain."""
    names = set(json.loads(str(golden["cpu/digests"]))) | {
        k.split("/", 1)[1] for k in golden if k.startswith("cpu/")}
    for prefix in ("doublets_", "filtered_doublets_", "clusters_", "cell_cluster_", "jets_",
                   "cluster_jet_", "genjets_", "rho_", "corrected_jets_", "trigger_"):
        assert any(n.startswith(prefix) for n in names), prefix


if __name__ == "__main__":
    regenerate(Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN)
    print("wrote", GOLDEN)
