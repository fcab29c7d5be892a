"""Stage ``jet_regression``: a small dense network calibrates each HLT jet to the offline pT.

Beside the factorized ``jec`` (it reads the raw ``jets``, not ``corrected_jets``), the network of
:mod:`hltemu.jet_regression` predicts per jet ``log(pT_offline / pT_raw)`` (and, for a model
with a second output, ``log(pT_truth / pT_raw)``) from HLT quantities only: raw pT, |eta|,
area, the event's rho, the number and energy sharing of the constituent clusters, their EM
fraction (``clusters.energy_em``), the jet width and, for a model that uses it, the event's
pixel-vertex count (the features are listed in the weights file; a model using
``n_pixel_vertices`` makes the stage need ``pixelvertices``).  Trained by ``hltemu
train-jet-regression`` (:mod:`hltemu.jet_regression_train`); not in the default chain: name it
in ``--stages``.

Needs ``jets`` (``pt`` [GeV], ``eta``, ``phi`` [rad], ``area``), ``clusters`` (``energy``,
``energy_em`` [GeV], ``eta``, ``phi``), ``cluster_jet`` (``jet``) and ``rho`` (``rho``).  Adds
``regressed_jets``, one row per row of ``jets`` in the same order: every column of ``jets`` with
``pt``, ``E``, ``mass``, ``px``, ``py``, ``pz`` scaled by ``factor`` = ``exp(log_offline_over_raw)``
times the model's residual calibration (:func:`hltemu.jet_regression.calibrated_log_factor`,
looked up at the network's pT), plus ``pt_raw`` [GeV], ``factor``, ``residual`` (that
residual factor, for a model with one) and the model's outputs (``log_offline_over_raw``, and
``log_truth_over_raw`` when the model has it), float64.  Trigger paths cut on these jets with
``jets = "regressed_jets"`` in their menu table.

The shipped model
-----------------
``builtin:jet_regression_v2.npz`` (34 kB; 10 features, dense 64-64-32 with ReLU, 2 outputs;
7,010 parameters; residual in 4 |eta| bins, 34 knots from offline 30 GeV), trained at pileup
50 only on 32,342 HLT jets matched to offline jets (seeds 2001, 2007 and 2008,
``benchmarks/SAMPLES.md``; offline pT >= 20 GeV, |eta| < 3; 40 epochs, the best validation epoch
33).  Measured on the held-out seeds 2005 and 2006 (``examples/jet_regression_response.py``,
``benchmarks/jetreg/``) against a factorized L1FastJet + L2Relative derived on the same
training events against the same offline reference (``derive-jec --reference pfjets``):

* pileup 50, |eta| < 1.3, offline 30-50 / 50-100 / 100-200 / 200-500 GeV: resolution (half
  16-84% width over the median) 0.184 / 0.128 / 0.099 / 0.078 against 0.213 / 0.133 / 0.110 /
  0.087 (bootstrap errors 0.002-0.006), median response 0.998-1.000 against 0.998-1.020; at
  1.3 < |eta| < 2.5, 0.174 / 0.109 / 0.080 / 0.070 against 0.185 / 0.116 / 0.088 / 0.079;
* 2.5 < |eta| < 3, beyond the tracker, the offline jets are made of the same clusters, which
  any calibration with the offline JEC's shape reproduces: resolution 0.02-0.04 for the
  factorized chain, 0.03-0.05 for the network;
* other pileups, same seed 2005 (the network has seen pileup 50 only): at pileup 0 it reads
  high, 1.017-1.031 (|eta| < 1.3), 1.027-1.040 (1.3-2.5) and 1.08-1.10 beyond, with a
  resolution at |eta| < 1.3 of 0.176 / 0.121 / 0.100 / 0.075 against 0.201 / 0.122 / 0.110 /
  0.082; at pileup 100, 1.027 at 30-50 GeV (the factorized chain 1.061) and 0.996-1.025
  above.

The response of the network alone (without the residual) read 0.94-0.98 at offline 30-50
GeV: see :mod:`hltemu.jet_regression` on why.  Below offline 30 GeV the regressed pT is not
calibrated (the residual is held at its first knot).  The stage stays out of the default
chain: it is an alternative to ``jec``, chosen per path.

Backends: ``reference`` computes the features with NumPy array code
(:func:`hltemu.jet_regression.jet_features_reference`) and the network as matrix products
(:func:`hltemu.jet_regression.forward_reference`); ``cpu`` and ``cuda`` run one kernel per jet
(:mod:`hltemu.kernels.jet_regression`, the same scalar functions compiled for both).  Outputs
agree within ``1e-4 + 2e-5 |output|`` (:data:`hltemu.jet_regression.OUTPUT_TOLERANCE`,
``OUTPUT_RTOL``; on the log outputs, so ``factor`` and the scaled momenta within that,
relative): float32 sums in another order.  Measured on the CPU and the CUDA simulator only (no
GPU at hand, 2026-11-29).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import param
from hltemu.jet_regression import (
    CLUSTER_INPUTS,
    FEATURES,
    JET_INPUTS,
    JetRegression,
    Residual,
    calibrated_log_factor,
    flat_params,
    forward_reference,
    get_model,
    jet_features_reference,
    standardise,
)
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Stage, check_only, register

#: Jet columns scaled by the regression factor (as ``jec`` scales them).
SCALED_COLUMNS: tuple[str, ...] = ("pt", "E", "mass", "px", "py", "pz")
#: What the stage always reads; ``pixelvertices`` too for a model using ``n_pixel_vertices``.
BASE_NEEDS: tuple[str, ...] = ("jets", "clusters", "cluster_jet", "rho")
VERTEX_COLLECTION = "pixelvertices"


@dataclass(frozen=True)
class JetRegressionConfig:
    """Stage ``jet_regression``: the HLT jet-energy regression of ``jets`` into
    ``regressed_jets``.  ``weights``: a model file (``builtin:NAME.npz`` in ``hltemu/models``
    or a path), e.g. one written by ``hltemu train-jet-regression``.
    """

    weights: str = param("builtin:jet_regression_v2.npz", "", "jet-regression weights file "
                         "(.npz: layers, feature standardisation, feature list)", path=True)


def model_for(cfg: JetRegressionConfig) -> JetRegression:
    """The model ``cfg.weights`` names (read and checked once per file version)."""
    return get_model(str(cfg.weights))


def needs(cfg: JetRegressionConfig) -> tuple[str, ...]:
    """:data:`BASE_NEEDS`, plus ``pixelvertices`` when the model uses ``n_pixel_vertices`` (a
    weights file that cannot be read is left to the planner's check, which names it)."""
    from hltemu.jet_regression import ModelError

    try:
        model = model_for(cfg)
    except ModelError:
        return BASE_NEEDS
    return BASE_NEEDS + ((VERTEX_COLLECTION,) if "n_pixel_vertices" in model.features else ())


class Prepared(NamedTuple):
    """What :func:`prepare` builds once per (config, backend): the model and its arrays on the
    backend's device."""

    model: JetRegression
    feature_index: Any
    mean: Any
    std: Any
    params: Any
    layout: Any
    residual: Residual | None


def prepare(cfg: JetRegressionConfig, backend: Backend) -> Prepared:
    """Read the model and upload its arrays to ``backend``."""
    from hltemu.kernels.jet_regression import N_FEATURES

    assert N_FEATURES == len(FEATURES), "kernels/jet_regression.py lists other features"
    model = model_for(cfg)
    params, layout = flat_params(model)
    up = backend.to_device
    res = model.residual
    residual = None if res is None else Residual(
        *(up(np.ascontiguousarray(a, dtype=np.float64))
          for a in (res.eta_edges, res.log_pt, res.log_factor)))
    return Prepared(model, up(model.feature_index()), up(np.asarray(model.feature_mean)),
                    up(np.asarray(model.feature_std)), up(params), up(layout), residual)


class Inputs(NamedTuple):
    """The stage's inputs on one backend: jet and cluster columns (float64), each jet's rho
    and vertex count, and each cluster's global jet row (``cl_jet``, int64, -1 for none)."""

    jet: dict[str, Any]
    jet_rho: Any
    jet_nvtx: Any
    cl: dict[str, Any]
    cl_jet: Any


def _column(coll: Collection, name: str, column: str, xp: Any) -> Any:
    if column not in coll:
        raise PipelineError(f"stage 'jet_regression' needs column {column!r} of collection "
                            f"{name!r}; it has {sorted(coll.columns)}"
                            + (" (energy_em: stage topocluster writes it since issue 20; rerun "
                               "topocluster)" if column == "energy_em" else ""))
    return xp.asarray(coll[column], dtype=xp.float64)


def gather_inputs(batch: EventBatch, model: JetRegression) -> Inputs:
    """Check and gather what the features read (:class:`PipelineError` naming the missing
    collection or column, or a ``cluster_jet`` not aligned with ``clusters``)."""
    be = batch.backend
    xp = be.xp
    missing = [n for n in BASE_NEEDS if n not in batch]
    if "n_pixel_vertices" in model.features and VERTEX_COLLECTION not in batch:
        missing.append(VERTEX_COLLECTION)
    if missing:
        raise PipelineError(f"stage 'jet_regression' needs collection(s) {missing}; the batch "
                            f"has {sorted(batch)}")
    jets, clusters, cluster_jet = batch["jets"], batch["clusters"], batch["cluster_jet"]
    jet = {c: _column(jets, "jets", c, xp) for c in JET_INPUTS}
    cl = {c: _column(clusters, "clusters", c, xp) for c in CLUSTER_INPUTS}
    if "jet" not in cluster_jet:
        raise PipelineError(f"stage 'jet_regression' needs column 'jet' of collection "
                            f"'cluster_jet'; it has {sorted(cluster_jet.columns)}")
    if cluster_jet.size != clusters.size or cluster_jet.n_events != clusters.n_events:
        raise PipelineError(f"stage 'jet_regression': cluster_jet has {cluster_jet.size} rows "
                            f"in {cluster_jet.n_events} events, clusters {clusters.size} in "
                            f"{clusters.n_events}: they must be aligned row for row")
    ev = jets.event_index()
    jet_rho = _column(batch["rho"], "rho", "rho", xp)[ev]
    if "n_pixel_vertices" in model.features:
        pv = batch[VERTEX_COLLECTION].offsets
        jet_nvtx = (pv[1:] - pv[:-1]).astype(xp.float64)[ev]
    else:
        jet_nvtx = xp.zeros(jets.size, dtype=xp.float64)
    # global jet row of each cluster (-1: in no jet)
    local = xp.asarray(cluster_jet["jet"], dtype=xp.int64)
    gj = xp.where(local >= 0, jets.offsets[clusters.event_index()] + local, -1)
    return Inputs(jet, jet_rho, jet_nvtx, cl, gj)


def constituents(inp: Inputs, n_clusters: int, xp: Any) -> tuple[Any, Any]:
    """Each jet's constituent clusters as CSR for the kernels: ``(member_offsets, members)``,
    int64, cluster rows ascending within a jet."""
    gj = inp.cl_jet
    n_jets = int(inp.jet["pt"].shape[0])
    inside = xp.nonzero(gj >= 0)[0]
    key = gj[inside] * max(n_clusters, 1) + inside  # unique: no reliance on sort stability
    members = inside[xp.argsort(key)]
    member_offsets = xp.searchsorted(gj[members], xp.arange(n_jets + 1, dtype=xp.int64))
    return member_offsets.astype(xp.int64), members.astype(xp.int64)


def regressed_jets(batch: EventBatch, prep: Prepared, outputs: Any) -> dict[str, Collection]:
    """``regressed_jets`` from the network's outputs ``(n_jets, n_out)``, with the model's
    residual calibration (any backend: one array code)."""
    xp = batch.backend.xp
    jets = batch["jets"]
    model = prep.model
    out = xp.asarray(outputs, dtype=xp.float64)
    log_factor, log_res = calibrated_log_factor(out[:, 0], jets["pt"], jets["eta"],
                                                prep.residual, xp)
    factor = xp.exp(log_factor)
    cols = dict(jets.columns)
    for name in SCALED_COLUMNS:
        if name in cols:
            cols[name] = xp.asarray(cols[name], dtype=xp.float64) * factor
    cols["pt_raw"] = xp.asarray(jets["pt"], dtype=xp.float64)
    cols["factor"] = factor
    if model.residual is not None:
        cols["residual"] = xp.exp(log_res)
    for i, name in enumerate(model.outputs):
        cols[name] = xp.ascontiguousarray(out[:, i])
    return {"regressed_jets": Collection(jets.offsets, cols)}


def outputs_reference(batch: EventBatch, prep: Prepared) -> np.ndarray:
    """The network's outputs with NumPy: features by array code, then matrix products."""
    inp = gather_inputs(batch, prep.model)
    host = batch.backend.to_host
    f = jet_features_reference({k: host(v) for k, v in inp.jet.items()}, host(inp.jet_rho),
                               host(inp.jet_nvtx), {k: host(v) for k, v in inp.cl.items()},
                               host(inp.cl_jet))
    return forward_reference(standardise(f, prep.model), prep.model)


def _kernel_args(batch: EventBatch, inp: Inputs, prep: Prepared) -> tuple[Any, ...]:
    """The kernels' arguments before ``out`` (``regress_jets_cpu`` and ``_cuda``)."""
    return (*constituents(inp, batch["clusters"].size, batch.backend.xp), inp.cl["energy"],
            inp.cl["energy_em"], inp.cl["eta"], inp.cl["phi"], inp.jet["pt"], inp.jet["eta"],
            inp.jet["phi"], inp.jet["area"], inp.jet_rho, inp.jet_nvtx, prep.feature_index,
            prep.mean, prep.std, prep.params, prep.layout)


def outputs_cpu(batch: EventBatch, prep: Prepared) -> np.ndarray:
    """The same with the Numba kernel, ``prange`` over jets."""
    from hltemu.kernels.jet_regression import regress_jets_cpu

    inp = gather_inputs(batch, prep.model)
    out = np.zeros((inp.jet["pt"].shape[0], len(prep.model.outputs)), dtype=np.float32)
    if out.shape[0]:
        regress_jets_cpu(*_kernel_args(batch, inp, prep), out)
    return out


def outputs_cuda(batch: EventBatch, prep: Prepared) -> Any:
    """The same with the CUDA kernel, one thread per jet."""
    from hltemu.kernels.jet_regression import regress_jets_cuda

    xp = batch.backend.xp
    inp = gather_inputs(batch, prep.model)
    n = int(inp.jet["pt"].shape[0])
    out = xp.zeros((n, len(prep.model.outputs)), dtype=xp.float32)
    if n:
        regress_jets_cuda[blocks(n), THREADS_PER_BLOCK](*_kernel_args(batch, inp, prep),
                                                         out)
    return out


def run_reference(batch: EventBatch, cfg: JetRegressionConfig, prep: Prepared
                  ) -> dict[str, Collection]:
    return regressed_jets(batch, prep, outputs_reference(batch, prep))


def run_cpu(batch: EventBatch, cfg: JetRegressionConfig, prep: Prepared
            ) -> dict[str, Collection]:
    return regressed_jets(batch, prep, outputs_cpu(batch, prep))


def run_cuda(batch: EventBatch, cfg: JetRegressionConfig, prep: Prepared
             ) -> dict[str, Collection]:
    return regressed_jets(batch, prep, outputs_cuda(batch, prep))


STAGE = register(Stage(
    name="jet_regression",
    needs=needs,
    adds=("regressed_jets",),
    config_type=JetRegressionConfig,
    prepare=prepare,
    plan=check_only(model_for),
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    in_default_chain=False,
    doc="HLT jet-energy regression (dense network on jet and cluster features) into "
        "regressed_jets",
))
