"""Training the HLT jet-energy regression with PyTorch (optional extra ``hltemu[train]``).

``hltemu train-jet-regression FILES`` reads ``hltemu run`` outputs holding the HLT side
(``jets``, ``clusters`` with ``energy_em``, ``cluster_jet``, ``rho``) and the offline side
(``pfjets``, ``pfrho``; optionally ``genjets``) of the same events, e.g.::

    hltemu run QCD.root --stages topocluster,antikt,rho,jec,tracks,vertices,pfcandidates,\\
        pfjets,pfrho,genjets --drop pfcandidates --drop pfcandidate_jet --drop tracks \\
        --drop track_pv --drop cell_cluster

and trains the network of :mod:`hltemu.jet_regression`:

* **targets**: each HLT jet matched one-to-one to an offline jet by Delta R < ``max_dr``
  (0.2; :func:`hltemu.jetmatch.match_jets`, closest pairs first) gets ``log(pT_offline /
  pT_raw)``, ``pT_offline`` the pfjet's pT corrected by the shipped offline JEC
  (:data:`hltemu.jec.derive.OFFLINE_LEVELS` with the event's ``pfrho``, as ``derive-jec
  --reference pfjets``); with ``genjets`` in the files the second output
  ``log(pT_truth / pT_raw)`` is trained on the jets that also match a truth jet (Delta R <
  ``max_dr``);
* **jets used**: offline pT >= ``pt_min`` (20 GeV) and offline |eta| < 3 (the calorimeter);
* **weights**: flat in (offline pT, offline |eta|) bins (:data:`PT_EDGES`, :data:`ETA_EDGES`):
  each jet weighs 1 / (jets in its bin, at least :data:`MIN_BIN_JETS`), normalised to a mean
  of 1, so that the falling spectrum does not pull the fit to low pT;
* **loss**: the Huber loss (``huber_delta`` 0.1 in log pT, so roughly 10% and beyond counts
  linearly: the tails of calorimeter response do not dominate), weighted;
* **split**: a seeded fraction of *events* (``val_fraction``, 20%) is held for validation; after
  every epoch the weights are exported and the validation loss is computed with the NumPy
  forward pass the stage's reference runs; the epoch with the lowest is kept;
* **standardisation**: the training jets' feature mean and standard deviation (1 for a constant
  feature, e.g. the nominal area), stored with the weights;
* **residual** (:func:`derive_residual`, unless ``--no-residual``): on every matched jet of the
  files (training and validation events), the median of ``pT_net / pT_offline`` per |eta| bin
  (:data:`RESIDUAL_ETA_EDGES`) and offline-pT bin (:data:`PT_EDGES` from
  ``--residual-pt-min``, 30 GeV, merged upward to at least ``--residual-min-jets``,
  :data:`RESIDUAL_MIN_JETS`), placed at the bin's median ``pT_net`` and inverted (three
  passes, each correcting what the last left); every jet counts once, as in ``derive-jec``'s
  default.  The network reads low in offline-pT bins where its resolution is wide (see
  :mod:`hltemu.jet_regression`); this takes it to the offline scale there, as L2Relative does
  for the factorized chain.  Below 30 GeV the inversion is ill-conditioned (the median
  ``pT_net`` hardly rises with the offline pT near the training's ``--pt-min``; from 20 GeV the
  resolution at 20-30 GeV doubled on the training seeds' validation events), so the residual
  is held at its first knot there.

Adam with a cosine-decayed learning rate; PyTorch in deterministic mode on the CPU, so the same
files, options, seed and threads give the same weights.  The file records the inputs (names,
events, and the generation command and settings of the raw files their run read, from the
outputs' provenance), the options, the seeds, the jet counts and the losses.  PyTorch is
imported only inside the functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from hltemu.jet_regression import (
    DEFAULT_FEATURES,
    FEATURE_NAMES,
    OUTPUTS,
    JetRegression,
    Residual,
    calibrated_log_factor,
    constituent_rows,
    forward_reference,
    jet_features_reference,
    save_model,
    standardise,
)

TORCH_MISSING = ("training the jet regression needs PyTorch, which is not installed: "
                 "pip install 'hltemu[train]'")
#: Offline-pT bin edges [GeV] of the flat weighting.
PT_EDGES: tuple[float, ...] = (20, 25, 30, 40, 50, 65, 80, 100, 130, 170, 220, 300, 400, 550,
                               800, 1e9)
#: Offline-|eta| bin edges of the flat weighting.
ETA_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.3, 1.7, 2.0, 2.5, 3.0)
#: A bin with fewer jets weighs its jets as if it had this many (no single jet dominates).
MIN_BIN_JETS = 20
#: |eta| edges of the residual calibration.
RESIDUAL_ETA_EDGES: tuple[float, ...] = (0.0, 1.3, 2.0, 2.5, 3.0)
#: Fewest jets of an (offline pT, |eta|) bin of the residual (bins are merged upward to it):
#: its median then has a statistical error of about 1.25 x 0.1 / sqrt(300) = 0.7% at a 10%
#: resolution.
RESIDUAL_MIN_JETS = 300
#: Passes of the residual's numerical inversion.
RESIDUAL_PASSES = 3
#: Collections read from every file (``genjets`` and ``pixelvertices`` when present).
NEEDED: tuple[str, ...] = ("jets", "clusters", "cluster_jet", "rho", "pfjets", "pfrho")


class TrainingError(click.ClickException):
    """Inputs that cannot be trained on, with the file and the reason."""


@dataclass
class JetSet:
    """Matched jets, ready for training.

    ``features`` float64 ``(n, len(FEATURE_NAMES))`` (every feature,
    :func:`~hltemu.jet_regression.jet_features_reference`);
    ``target`` float64 ``(n, 2)``: ``log(pT_offline / pT_raw)`` and ``log(pT_truth / pT_raw)``
    (NaN where no truth jet matches); ``pt_offline`` [GeV], ``eta_offline``; ``event`` (global
    event number over the files, for the split); ``files`` what the provenance records.
    """

    features: np.ndarray
    target: np.ndarray
    pt_offline: np.ndarray
    eta_offline: np.ndarray
    event: np.ndarray
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.target.shape[0])

    def select(self, mask: np.ndarray) -> JetSet:
        return JetSet(self.features[mask], self.target[mask], self.pt_offline[mask],
                      self.eta_offline[mask], self.event[mask], self.files)


def _file_record(path: Path, n_events: int) -> dict[str, Any]:
    """The input's name and events, with the file(s) its run read and their generation command
    and settings (from the output's provenance, when hltemu generate made them)."""
    from hltemu.io.provenance import read_provenance

    rec: dict[str, Any] = {"file": path.name, "events": n_events, "run_inputs": []}
    for inp in (read_provenance(str(path)) or {}).get("inputs") or []:
        if not isinstance(inp, dict):
            continue
        gen = inp.get("provenance") or {}
        rec["run_inputs"].append({"file": inp.get("file"), "command": gen.get("command"),
                                  "settings": gen.get("settings")})
    return rec


def load_jets(files: Sequence[str | Path], max_dr: float = 0.2, pt_min: float = 20.0,
              vertices: bool = False) -> JetSet:
    """The matched jets of ``files`` (see the module docstring); :class:`TrainingError`
    naming the file for a missing collection or column or a file without matched jets.
    ``vertices``: fill ``n_pixel_vertices`` from ``pixelvertices`` (else 0)."""
    from hltemu.io import read_collections
    from hltemu.io.layout import common_collections
    from hltemu.jec import load_chain
    from hltemu.jec.chain import jet_values
    from hltemu.jec.derive import OFFLINE_LEVELS
    from hltemu.jetmatch import match_jets

    if not files:
        raise TrainingError("no input files given")
    offline = load_chain(OFFLINE_LEVELS)
    parts: list[JetSet] = []
    records = []
    ev0 = 0
    for f in files:
        path = Path(f)
        have = set(common_collections([str(path)]))
        needed = list(NEEDED) + (["pixelvertices"] if vertices else [])
        missing = [c for c in needed if c not in have]
        if missing:
            raise TrainingError(
                f"{path}: no collection {', '.join(map(repr, missing))}; train-jet-regression "
                "reads the output of `hltemu run FILE --stages topocluster,antikt,rho,tracks,"
                "vertices,pfcandidates,pfjets,pfrho,genjets` with clusters and cluster_jet kept")
        with_truth = "genjets" in have
        c = read_collections(str(path), needed + (["genjets"] if with_truth else []))
        jets, clusters, pf = c["jets"], c["clusters"], c["pfjets"]
        if "energy_em" not in clusters:
            raise TrainingError(f"{path}: clusters have no column 'energy_em' (written by stage "
                                "topocluster since issue 20): rerun hltemu run on the raw file")
        n_ev = jets.n_events
        jev = np.asarray(jets.event_index())
        nvtx = (np.diff(np.asarray(c["pixelvertices"].offsets)).astype(np.float64)[jev]
                if vertices else np.zeros(jets.size))
        cl_jet = constituent_rows(np.asarray(jets.offsets), np.asarray(clusters.offsets),
                                  np.asarray(c["cluster_jet"]["jet"]))
        feats = jet_features_reference(
            {k: np.asarray(jets[k]) for k in ("pt", "eta", "phi", "area")},
            np.asarray(c["rho"]["rho"], dtype=np.float64)[jev], nvtx,
            {k: np.asarray(clusters[k]) for k in ("energy", "energy_em", "eta", "phi")}, cl_jet)
        pt_off = offline.correct_reference(jet_values(pf, c["pfrho"]))[0]
        pev = np.asarray(pf.event_index())
        ia, ib = match_jets(jev, jets["eta"], jets["phi"], pev, pf["eta"], pf["phi"], max_dr,
                            n_ev)
        pt_raw = np.asarray(jets["pt"], dtype=np.float64)
        target = np.full((jets.size, 2), np.nan)
        target[ia, 0] = np.log(pt_off[ib] / pt_raw[ia])
        if with_truth:
            gj = c["genjets"]
            ga, gb = match_jets(jev, jets["eta"], jets["phi"], np.asarray(gj.event_index()),
                                gj["eta"], gj["phi"], max_dr, n_ev)
            target[ga, 1] = np.log(np.asarray(gj["pt"], dtype=np.float64)[gb] / pt_raw[ga])
        ref_pt = np.full(jets.size, np.nan)
        ref_eta = np.full(jets.size, np.nan)
        ref_pt[ia] = pt_off[ib]
        ref_eta[ia] = np.asarray(pf["eta"], dtype=np.float64)[ib]
        keep = np.isfinite(target[:, 0]) & (ref_pt >= pt_min) & (np.abs(ref_eta) < 3.0)
        if not keep.any():
            raise TrainingError(f"{path}: no HLT jet matches an offline jet above {pt_min} GeV "
                                f"within Delta R < {max_dr}")
        parts.append(JetSet(feats[keep], target[keep], ref_pt[keep], ref_eta[keep],
                            jev[keep] + ev0))
        records.append(_file_record(path, n_ev))
        ev0 += n_ev
    return JetSet(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                    ("features", "target", "pt_offline", "eta_offline", "event")), records)


def flat_weights(pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Per jet, 1 / (jets in its (offline pT, |eta|) bin, at least :data:`MIN_BIN_JETS`),
    normalised to a mean of 1."""
    ip = np.clip(np.searchsorted(PT_EDGES, pt, side="right") - 1, 0, len(PT_EDGES) - 2)
    ie = np.clip(np.searchsorted(ETA_EDGES, np.abs(eta), side="right") - 1, 0,
                 len(ETA_EDGES) - 2)
    cell = ip * (len(ETA_EDGES) - 1) + ie
    count = np.bincount(cell, minlength=(len(PT_EDGES) - 1) * (len(ETA_EDGES) - 1))
    w = 1.0 / np.maximum(count[cell], MIN_BIN_JETS)
    return w / w.mean() if w.size else w


def residual_bins(pt: np.ndarray, pt_min: float, min_jets: int = RESIDUAL_MIN_JETS
                  ) -> list[tuple[float, float]]:
    """Offline-pT bins [GeV] of one |eta| bin of the residual: :data:`PT_EDGES` from
    ``pt_min`` (itself the first edge), each merged with the next until it holds ``min_jets``
    of ``pt``; a short last bin joins the one before."""
    edges = [pt_min, *(e for e in PT_EDGES if e > pt_min)]
    bins: list[list[float]] = []
    lo = edges[0]
    for hi in edges[1:]:
        if np.count_nonzero((pt >= lo) & (pt < hi)) >= min_jets:
            bins.append([lo, hi])
            lo = hi
    if bins and lo < edges[-1] and np.any(pt >= lo):
        bins[-1][1] = edges[-1]
    return [(a, b) for a, b in bins]


def derive_residual(log_net: np.ndarray, target: np.ndarray, pt_raw: np.ndarray,
                    eta: np.ndarray, pt_offline: np.ndarray, eta_offline: np.ndarray,
                    pt_min: float, min_jets: int = RESIDUAL_MIN_JETS
                    ) -> tuple[Residual, list[dict[str, Any]]]:
    """The residual calibration (module docstring) of a network whose first output on the
    matched jets is ``log_net``: ``target`` = ``ln(pT_offline / pT_raw)``, ``pt_raw`` [GeV]
    and ``eta`` of the HLT jets (what the stage looks the residual up with), ``pt_offline``
    [GeV] and ``eta_offline`` of their offline jets (what the bins group by); bins of offline
    pT from ``pt_min`` [GeV], each with at least ``min_jets``.

    Returns the :class:`~hltemu.jet_regression.Residual` and a record per bin (|eta| and pT
    edges, jets, the knot ``pT_net`` [GeV], the median response before and after).  A bin
    whose median ``pT_net`` does not exceed the previous bin's is left out (noted in its
    record); an |eta| bin without a single pT bin of ``min_jets`` gets no residual (factor 1;
    a record says so)."""
    log_net = np.asarray(log_net, dtype=np.float64)
    pt_net = np.asarray(pt_raw, dtype=np.float64) * np.exp(log_net)
    pt_off = np.asarray(pt_offline, dtype=np.float64)
    aeta = np.abs(np.asarray(eta_offline, dtype=np.float64))
    r_net = np.exp(log_net - np.asarray(target, dtype=np.float64))  # pT_net / pT_offline
    edges = np.asarray(RESIDUAL_ETA_EDGES, dtype=np.float64)
    rows: list[tuple[np.ndarray, list[np.ndarray]]] = []
    records: list[dict[str, Any]] = []
    for e in range(edges.size - 1):
        in_eta = (aeta >= edges[e]) & (aeta < edges[e + 1])
        knots, members = [], []
        for lo, hi in residual_bins(pt_off[in_eta], pt_min, min_jets):
            sel = in_eta & (pt_off >= lo) & (pt_off < hi)
            knot = float(np.log(np.median(pt_net[sel])))
            rec = {"eta": [float(edges[e]), float(edges[e + 1])], "pt": [lo, hi],
                   "jets": int(sel.sum()), "pt_net": round(math.exp(knot), 3),
                   "response_net": round(float(np.median(r_net[sel])), 4)}
            records.append(rec)
            if knots and knot <= knots[-1]:
                rec["left_out"] = "median pT_net not above the previous bin's"
                continue
            knots.append(knot)
            members.append(sel)
        if not knots:  # too few jets: no residual in this |eta| bin, and the record says so
            records.append({"eta": [float(edges[e]), float(edges[e + 1])], "pt": [pt_min, None],
                            "jets": int(np.count_nonzero(in_eta & (pt_off >= pt_min))),
                            "left_out": f"fewer than {min_jets} jets above {pt_min} GeV: "
                                        "no residual in this |eta| bin"})
            knots, members = [math.log(max(pt_min, 1.0))], [np.zeros(pt_off.size, bool)]
        rows.append((np.asarray(knots), members))
    width = max(k.size for k, _ in rows)
    log_pt = np.empty((len(rows), width))
    values = np.zeros((len(rows), width))
    for i, (k, _) in enumerate(rows):
        # pad short rows beyond their last knot (one e-fold apart): constant there anyway
        log_pt[i] = np.r_[k, k[-1] + np.arange(1, width - k.size + 1)]
    for _ in range(RESIDUAL_PASSES):
        res = Residual(edges, log_pt, values)
        log_total = calibrated_log_factor(log_net, pt_raw, eta, res)[0]
        r = np.exp(log_total - np.asarray(target, dtype=np.float64))
        values = values.copy()
        for i, (k, members) in enumerate(rows):
            for j, sel in enumerate(members):
                if sel.any():
                    values[i, j] -= math.log(float(np.median(r[sel])))
            values[i, k.size:] = values[i, k.size - 1]
    res = Residual(edges, log_pt, values)
    r = np.exp(calibrated_log_factor(log_net, pt_raw, eta, res)[0]
               - np.asarray(target, dtype=np.float64))
    kept = iter(sel for _, members in rows for sel in members if sel.any())
    for rec in records:
        if "left_out" not in rec:
            rec["response_after"] = round(float(np.median(r[next(kept)])), 4)
    return res, records


def residual_for(model: JetRegression, data: JetSet, pt_min: float,
                 min_jets: int = RESIDUAL_MIN_JETS) -> tuple[Residual, list[dict[str, Any]]]:
    """:func:`derive_residual` of ``model`` on the jets of ``data``."""
    log_net = forward_reference(standardise(data.features, model), model)[:, 0]
    f = data.features
    pt_raw = np.exp(f[:, FEATURE_NAMES.index("log_pt_raw")])
    eta = f[:, FEATURE_NAMES.index("abs_eta")]
    return derive_residual(log_net, data.target[:, 0], pt_raw, eta, data.pt_offline,
                           data.eta_offline, pt_min, min_jets)


def split_events(data: JetSet, val_fraction: float, seed: int) -> tuple[JetSet, JetSet]:
    """``(train, validation)``: a seeded random ``val_fraction`` of the events."""
    events = np.unique(data.event)
    rng = np.random.default_rng(seed)
    val_events = rng.permutation(events)[:int(round(val_fraction * events.size))]
    is_val = np.isin(data.event, val_events)
    return data.select(~is_val), data.select(is_val)


def standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per column (float32; 1 where the column is constant)."""
    mean = features.mean(axis=0) if features.shape[0] else np.zeros(features.shape[1])
    std = features.std(axis=0) if features.shape[0] else np.ones(features.shape[1])
    std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise click.ClickException(TORCH_MISSING) from None
    return torch


def torch_network(n_in: int, hidden: Sequence[int], n_out: int) -> Any:
    """The PyTorch twin of the stage's network: Linear + ReLU per hidden width, then Linear."""
    torch = _torch()
    layers: list[Any] = []
    width = n_in
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


def export(net: Any, features: tuple[str, ...], mean: np.ndarray, std: np.ndarray,
           outputs: tuple[str, ...], meta: dict[str, Any] | None = None) -> JetRegression:
    """The trained network as a :class:`JetRegression` (float32 copies of the weights)."""
    torch = _torch()
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    return JetRegression(
        tuple(m.weight.detach().cpu().numpy().astype(np.float32).copy() for m in linear),
        tuple(m.bias.detach().cpu().numpy().astype(np.float32).copy() for m in linear),
        tuple(features), np.asarray(mean, np.float32), np.asarray(std, np.float32),
        tuple(outputs), dict(meta or {}))


def weighted_huber(pred: np.ndarray, target: np.ndarray, weight: np.ndarray,
                   delta: float) -> float:
    """The training loss in NumPy: weighted mean Huber loss over the finite targets."""
    ok = np.isfinite(target)
    r = np.abs(np.where(ok, pred - np.where(ok, target, 0.0), 0.0))
    h = np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))
    w = np.where(ok, weight[:, None], 0.0)
    return float((h * w).sum() / max(w.sum(), 1e-300))


@dataclass
class TrainResult:
    model: JetRegression
    best_epoch: int
    history: list[dict[str, float]]
    seconds: float


def train(train_set: JetSet, val_set: JetSet, *, features: tuple[str, ...] = DEFAULT_FEATURES,
          hidden: Sequence[int] = (64, 64, 32), truth: bool = True, epochs: int = 30,
          seed: int = 1, lr: float = 2e-3, batch_size: int = 512, huber_delta: float = 0.1,
          threads: int = 2, progress: Any = None) -> TrainResult:
    """Train on ``train_set``, keep the epoch with the lowest loss on ``val_set`` (NumPy
    forward pass of the exported weights)."""
    torch = _torch()
    start = time.perf_counter()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    idx = np.array([FEATURE_NAMES.index(n) for n in features])
    n_out = 2 if truth else 1
    outputs = OUTPUTS[:n_out]
    mean, std = standardisation(train_set.features[:, idx])
    x = ((train_set.features[:, idx].astype(np.float32) - mean) / std).astype(np.float32)
    y = train_set.target[:, :n_out].astype(np.float32)
    w = flat_weights(train_set.pt_offline, train_set.eta_offline).astype(np.float32)
    val_x = ((val_set.features[:, idx].astype(np.float32) - mean) / std).astype(np.float32)
    val_y = val_set.target[:, :n_out]
    val_w = flat_weights(val_set.pt_offline, val_set.eta_offline)
    net = torch_network(len(features), hidden, n_out)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = max(1, math.ceil(x.shape[0] / batch_size)) * epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    tx, ty, tw = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, int, JetRegression] | None = None
    history = []
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(x.shape[0], generator=gen)
        total, seen = 0.0, 0.0
        for lo in range(0, x.shape[0], batch_size):
            sel = order[lo:lo + batch_size]
            pred = net(tx[sel])
            tgt, wt = ty[sel], tw[sel]
            ok = torch.isfinite(tgt)
            loss_el = torch.nn.functional.huber_loss(
                torch.where(ok, pred, torch.zeros_like(pred)),
                torch.where(ok, tgt, torch.zeros_like(tgt)), reduction="none", delta=huber_delta)
            wm = wt[:, None] * ok
            loss = (loss_el * wm).sum() / wm.sum().clamp_min(1e-12)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * float(wm.sum())
            seen += float(wm.sum())
        model = export(net, features, mean, std, outputs)
        val = weighted_huber(forward_reference(val_x, model).astype(np.float64), val_y, val_w,
                             huber_delta) if val_set.n else float("nan")
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1e-300),
                        "val_loss": val})
        if progress is not None:
            progress(history[-1])
        if best is None or not (val >= best[0]):  # NaN validation (no jets): keep the last
            best = (val, epoch, model)
    assert best is not None
    return TrainResult(best[2], best[1], history, time.perf_counter() - start)


@click.command("train-jet-regression")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", default="jet_regression.npz", show_default=True,
              help="Weights file to write (.npz).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True,
              help="Seed of the split, the initial weights and the batch order.")
@click.option("--hidden", default="64,64,32", show_default=True,
              help="Hidden layer widths, comma-separated (each at most 128).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3,
              show_default=True, help="Adam learning rate (cosine-decayed to 0).")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--huber-delta", type=click.FloatRange(min=0, min_open=True), default=0.1,
              show_default=True, help="Huber loss transition (in log pT).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2,
              show_default=True, help="Fraction of events held for validation.")
@click.option("--max-dr", type=click.FloatRange(min=0, min_open=True), default=0.2,
              show_default=True, help="HLT-offline (and HLT-truth) matching distance.")
@click.option("--pt-min", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Offline pT [GeV] of the jets trained on.")
@click.option("--truth/--no-truth", default=True, show_default=True,
              help="Train the second output log(pT_truth / pT_raw) (needs genjets).")
@click.option("--vertices/--no-vertices", default=False, show_default=True,
              help="Use the pixel-vertex count as a feature (needs pixelvertices).")
@click.option("--residual/--no-residual", default=True, show_default=True,
              help="Derive the residual calibration (numerical inversion of the network's "
                   "median response vs offline pT) and store it with the weights.")
@click.option("--residual-pt-min", type=click.FloatRange(min=0), default=30.0,
              show_default=True, help="Lowest offline pT [GeV] of the residual's bins (below, "
                                      "the residual stays at its first knot's value).")
@click.option("--residual-min-jets", type=click.IntRange(min=1), default=RESIDUAL_MIN_JETS,
              show_default=True, help="Fewest jets of a residual bin (bins merge upward).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--max-jets", type=click.IntRange(min=1), default=None,
              help="Use at most this many matched jets (the first ones).")
def train_jet_regression(files: tuple[str, ...], output: str, epochs: int, seed: int,
                         hidden: str, lr: float, batch_size: int, huber_delta: float,
                         val_fraction: float, max_dr: float, pt_min: float, truth: bool,
                         vertices: bool, residual: bool, residual_pt_min: float,
                         residual_min_jets: int, threads: int, max_jets: int | None) -> None:
    """Train the HLT jet-energy regression on FILES written by hltemu run; write an .npz.

    FILES hold jets, clusters (with energy_em), cluster_jet, rho, pfjets and pfrho (and
    genjets for the second output).  HLT jets are matched to offline jets (Delta R <
    --max-dr), weighted flat in (offline pT, |eta|) and fitted with a Huber loss to
    log(pT_offline / pT_raw); the epoch with the lowest validation loss is written.
    """
    _torch()
    try:
        widths = tuple(int(v) for v in hidden.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{hidden!r} is not comma-separated integers",
                                 param_hint="--hidden") from None
    if not widths or any(not 1 <= v <= 128 for v in widths):
        raise click.BadParameter(f"{hidden!r}: widths 1-128", param_hint="--hidden")
    t0 = time.perf_counter()
    data = load_jets(files, max_dr=max_dr, pt_min=pt_min, vertices=vertices)
    if max_jets is not None:
        data = data.select(np.arange(data.n) < max_jets)
    if truth and not np.isfinite(data.target[:, 1]).any():
        raise TrainingError("--truth: no jet matches a truth jet (files without genjets?); "
                            "use --no-truth")
    train_set, val_set = split_events(data, val_fraction, seed)
    click.echo(f"{data.n} matched jets ({train_set.n} training, {val_set.n} validation) from "
               f"{len(files)} file(s) in {time.perf_counter() - t0:.1f} s")
    features = DEFAULT_FEATURES + (("n_pixel_vertices",) if vertices else ())

    def report(h: dict[str, float]) -> None:
        click.echo(f"epoch {h['epoch']:3d}  train {h['train_loss']:.5f}  "
                   f"validation {h['val_loss']:.5f}")

    result = train(train_set, val_set, features=features, hidden=widths, truth=truth,
                   epochs=epochs, seed=seed, lr=lr, batch_size=batch_size,
                   huber_delta=huber_delta, threads=threads, progress=report)
    import torch

    res, res_records = (residual_for(result.model, data, residual_pt_min, residual_min_jets)
                        if residual else (None, []))
    for rec in res_records:
        if "left_out" in rec:
            click.echo(f"residual, |eta| {rec['eta'][0]}-{rec['eta'][1]}, offline pT "
                       f"{rec['pt'][0]}-{rec['pt'][1]} GeV ({rec['jets']} jets): "
                       f"{rec['left_out']}", err=True)
    meta = {"training": {
        "command": "hltemu train-jet-regression", "files": data.files,
        "jets": {"matched": data.n, "training": train_set.n, "validation": val_set.n,
                 "truth_matched": int(np.isfinite(data.target[:, 1]).sum())},
        "options": {"epochs": epochs, "seed": seed, "hidden": list(widths), "lr": lr,
                    "batch_size": batch_size, "huber_delta": huber_delta,
                    "val_fraction": val_fraction, "max_dr": max_dr, "pt_min": pt_min,
                    "truth": truth, "vertices": vertices, "threads": threads,
                    "max_jets": max_jets, "residual": residual,
                    "residual_pt_min": residual_pt_min,
                    "residual_min_jets": residual_min_jets},
        "weighting": {"pt_edges": list(PT_EDGES), "eta_edges": list(ETA_EDGES),
                      "min_bin_jets": MIN_BIN_JETS},
        "target": "log(pT_offline / pT_raw), pT_offline = pfjets corrected by the shipped "
                  "offline JEC (hltemu_PF_V2_MC) with pfrho",
        "residual": {"eta_edges": list(RESIDUAL_ETA_EDGES), "passes": RESIDUAL_PASSES,
                     "jets": "all matched jets (training and validation events)",
                     "bins": res_records} if residual else None,
        "best_epoch": result.best_epoch, "history": result.history,
        "seconds": round(result.seconds, 1), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }}
    model = JetRegression(result.model.weights, result.model.biases, result.model.features,
                          result.model.feature_mean, result.model.feature_std,
                          result.model.outputs, meta, residual=res)
    path = save_model(model, output)
    click.echo(f"best epoch {result.best_epoch} (validation loss "
               f"{result.history[result.best_epoch - 1]['val_loss']:.5f}); {model.n_parameters} "
               f"parameters; wrote {path} ({path.stat().st_size} bytes) in "
               f"{result.seconds:.1f} s of training")
