"""The HLT jet-energy regression: jet features, the weights file and the NumPy forward pass.

A small dense network gives each HLT calorimeter jet (stage ``antikt``'s ``jets``) the log of
the factor that takes its raw pT to the offline pT (``log(pT_offline / pT_raw)``: the matched
offline particle-flow jet's pT corrected by the shipped offline JEC, as ``hltemu derive-jec
--reference pfjets`` calibrates), and optionally a second output ``log(pT_truth / pT_raw)``.
Stage ``jet_regression`` (:mod:`hltemu.stages.jet_regression`) runs it; ``hltemu
train-jet-regression`` (:mod:`hltemu.jet_regression_train`) trains it with PyTorch.

Features
--------
Only what the HLT has, per jet (:data:`FEATURES`; a model uses any subset, named in its file).
The jet's constituents are its clusters (``cluster_jet``), massless, with ``pT_i = E_i /
cosh(eta_i)`` (GeV) and ``Delta R_i`` their distance to the jet axis in (eta, phi):

* ``log_pt_raw`` = ln(pT_raw / 1 GeV); ``abs_eta`` = ``|eta|``; ``area`` (jet area, the
  nominal ``pi R^2``); ``rho`` (the event's calorimeter rho, GeV per unit area);
  ``offset_fraction`` = ``rho * area / pT_raw`` (the share of pileup L1FastJet would remove);
* ``n_clusters`` (constituent clusters), ``lead_fraction`` = max ``pT_i`` / sum ``pT_i``,
  ``pt_d`` = sqrt(sum ``pT_i^2``) / sum ``pT_i`` (energy sharing);
* ``em_fraction`` = sum ``energy_em`` / sum ``energy`` of the constituents (``energy_em`` of
  stage ``topocluster``: the ECAL part), clipped to [-1, 2] (pileup-subtracted cells may be
  negative, so a cluster's ECAL part may exceed its energy);
* ``width`` = sum ``pT_i Delta R_i`` / sum ``pT_i``;
* ``n_pixel_vertices``: the event's pixel vertices (stage ``pixelvertices``); a model that uses
  it makes the stage need that collection.

A jet without constituents (not made by ``antikt`` from these clusters) gets ``n_clusters`` 0
and 0 for the four ratios.  Features are computed in float64, then rounded to float32.

The network
-----------
``x = (f - feature_mean) / feature_std`` (float32), then dense layers ``layer0 ... layerN``:
``h = W h + b`` with ReLU after every layer but the last, which is linear with one output per
name in ``outputs`` (the first is always ``log_offline_over_raw``).  Widths at most
:data:`MAX_WIDTH` (the CUDA kernel's per-thread scratch).  Everything is float32.

The residual calibration
------------------------
A network trained to predict ``log(pT_offline / pT_raw)`` from the jet gives, per jet, the
typical offline pT of HLT jets like it: an estimate of ``E[offline | HLT jet]``.  Binned in
*offline* pT that reads low where the resolution is wide against the spectrum's curvature
(measured on the training seeds at pileup 50, barrel: 0.95 at offline 30-50 GeV; a binned
conditional mean of ``ln pT_offline`` in ``ln pT_raw`` alone, no network, does the same, 0.90
to 0.92), which is the conditioning every regression has.  So a model may carry a
*residual*: a numerical inversion of the network's median response against offline pT, as
the factorized chain's L2Relative is derived
(:func:`hltemu.jet_regression_train.derive_residual`), stored per |eta| bin as the ``ln`` of
a factor at knots in ``ln pT_net`` (``pT_net = pT_raw exp(network output)``), linear between
the knots and constant beyond them.  The regressed pT is ``pT_net exp(residual(ln pT_net,
|eta|))`` (:func:`calibrated_log_factor`).

Weights file
------------
One ``.npz`` (read with ``allow_pickle=False``): ``layer<i>.weight`` ``(out, in)`` and
``layer<i>.bias`` ``(out,)`` (float32, as PyTorch stores ``nn.Linear``), ``feature_mean`` and
``feature_std`` (float32 ``(F,)``), ``features`` and ``outputs`` (string arrays) and ``meta``
(a JSON string: format, version, training provenance) and, for a model with a residual,
``residual.eta_edges`` (float64 ``(E + 1,)``, ascending from 0), ``residual.log_pt`` and
``residual.log_factor`` (float64 ``(E, K)``, knots strictly ascending per row).
:func:`load_model` checks everything
and raises :class:`ModelError` naming the file, the array and the expected and found shapes.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.config import BUILTIN_PREFIX, ConfigError, shipped_dir, spec_path
from hltemu.npz import read_arrays

#: ``format`` entry of the file's ``meta``.
FORMAT = "hltemu-jet-regression"
#: Version of the weights file this code reads and writes.
FORMAT_VERSION = 1
#: Widest layer the kernels accept (per-thread scratch of the CUDA kernel: 2 x 128 float32).
MAX_WIDTH = 128
#: Largest weights file shipped or written (bytes): the issue's budget.
MAX_FILE_BYTES = 1_000_000
#: Outputs a model may have, in this order: the first is required.
OUTPUTS: tuple[str, ...] = ("log_offline_over_raw", "log_truth_over_raw")
#: Outputs of different backends agree within ``OUTPUT_TOLERANCE + OUTPUT_RTOL * |output|``
#: (on the log outputs; so ``factor`` and the scaled momenta within that, relative): float32
#: sums in another order (and FMA contraction on CUDA) move them by a few float32 ulps of the
#: largest partial sums.  Measured (cpu and the CUDA simulator against the reference, 12 random
#: models and the shipped one on random jets, 2026-11-29): at most 7.6e-6 absolute on outputs
#: below 10 in size, 2.1e-6 relative above; the bounds are about 10x that.
OUTPUT_TOLERANCE = 1.0e-4
OUTPUT_RTOL = 2.0e-5
#: ``em_fraction`` is clipped to this range.
EM_FRACTION_RANGE = (-1.0, 2.0)

#: Every feature the kernels compute, in their order: name -> (unit, meaning).
FEATURES: dict[str, tuple[str, str]] = {
    "log_pt_raw": ("", "ln(raw pT / 1 GeV)"),
    "abs_eta": ("", "|eta| of the jet"),
    "area": ("", "jet area (eta-phi)"),
    "rho": ("GeV/area", "the event's calorimeter rho"),
    "offset_fraction": ("", "rho * area / raw pT"),
    "n_clusters": ("", "number of constituent clusters"),
    "lead_fraction": ("", "leading constituent pT / sum of constituent pT"),
    "pt_d": ("", "sqrt(sum pT_i^2) / sum pT_i over constituents"),
    "em_fraction": ("", "sum energy_em / sum energy of the constituents, clipped to [-1, 2]"),
    "width": ("", "sum pT_i Delta R_i / sum pT_i (Delta R to the jet axis)"),
    "n_pixel_vertices": ("", "pixel vertices of the event (stage pixelvertices)"),
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)
#: The features of a model trained without pixel tracking (no ``n_pixel_vertices``).
DEFAULT_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n != "n_pixel_vertices")
#: ``jets`` and ``clusters`` columns read.
JET_INPUTS: tuple[str, ...] = ("pt", "eta", "phi", "area")
CLUSTER_INPUTS: tuple[str, ...] = ("energy", "energy_em", "eta", "phi")


class ModelError(ConfigError):
    """A jet-regression weights file that cannot be used (missing, corrupt, inconsistent)."""


# -- features (NumPy reference) ------------------------------------------------------------------
def constituent_rows(jet_offsets: np.ndarray, cluster_offsets: np.ndarray,
                     cluster_jet: np.ndarray) -> np.ndarray:
    """Global jet row (int64) of every cluster, -1 for none: ``cluster_jet`` holds the jet's
    row within the event (stage ``antikt``)."""
    n_cl = int(cluster_offsets[-1])
    ev = np.repeat(np.arange(cluster_offsets.shape[0] - 1), np.diff(cluster_offsets))
    local = np.asarray(cluster_jet, dtype=np.int64)
    return np.where(local >= 0, np.asarray(jet_offsets, dtype=np.int64)[ev] + local, -1) \
        if n_cl else np.zeros(0, dtype=np.int64)


def jet_features_reference(jet: dict[str, np.ndarray], jet_rho: np.ndarray,
                           jet_nvtx: np.ndarray, cl: dict[str, np.ndarray],
                           cl_jet: np.ndarray) -> np.ndarray:
    """Every feature of :data:`FEATURES` for every jet, float64 ``(n_jets, len(FEATURES))``.

    ``jet``: columns ``pt`` [GeV], ``eta``, ``phi`` [rad], ``area``; ``jet_rho`` [GeV/area] and
    ``jet_nvtx`` (float) per jet; ``cl``: cluster columns ``energy``, ``energy_em`` [GeV],
    ``eta``, ``phi``; ``cl_jet``: global jet row of each cluster, -1 none
    (:func:`constituent_rows`).  NumPy array code, the reference of the kernels.
    """
    n = int(np.asarray(jet["pt"]).shape[0])
    pt = np.asarray(jet["pt"], dtype=np.float64)
    eta = np.asarray(jet["eta"], dtype=np.float64)
    phi = np.asarray(jet["phi"], dtype=np.float64)
    area = np.asarray(jet["area"], dtype=np.float64)
    rho = np.asarray(jet_rho, dtype=np.float64)
    inside = np.asarray(cl_jet) >= 0
    j = np.asarray(cl_jet)[inside]
    e = np.asarray(cl["energy"], dtype=np.float64)[inside]
    eem = np.asarray(cl["energy_em"], dtype=np.float64)[inside]
    ceta = np.asarray(cl["eta"], dtype=np.float64)[inside]
    cphi = np.asarray(cl["phi"], dtype=np.float64)[inside]
    cpt = e / np.cosh(ceta)
    dphi = (cphi - phi[j] + math.pi) % (2 * math.pi) - math.pi
    dr = np.sqrt((ceta - eta[j]) ** 2 + dphi ** 2)
    count = np.bincount(j, minlength=n).astype(np.float64)
    s_pt = np.bincount(j, weights=cpt, minlength=n)
    s_pt2 = np.bincount(j, weights=cpt * cpt, minlength=n)
    s_e = np.bincount(j, weights=e, minlength=n)
    s_em = np.bincount(j, weights=eem, minlength=n)
    s_w = np.bincount(j, weights=cpt * dr, minlength=n)
    lead = np.zeros(n)
    np.maximum.at(lead, j, cpt)
    has = count > 0
    safe = np.where(has, s_pt, 1.0)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(has, a / np.where(has, b, 1.0), 0.0)

    em = np.clip(ratio(s_em, s_e), *EM_FRACTION_RANGE)
    cols = {
        "log_pt_raw": np.log(pt), "abs_eta": np.abs(eta), "area": area, "rho": rho,
        "offset_fraction": rho * area / pt, "n_clusters": count,
        "lead_fraction": np.where(has, lead / safe, 0.0),
        "pt_d": np.where(has, np.sqrt(s_pt2) / safe, 0.0), "em_fraction": em,
        "width": np.where(has, s_w / safe, 0.0),
        "n_pixel_vertices": np.asarray(jet_nvtx, dtype=np.float64),
    }
    return np.stack([cols[name] for name in FEATURE_NAMES], axis=1) if n else \
        np.zeros((0, len(FEATURE_NAMES)))


# -- the model -----------------------------------------------------------------------------------
#: The arrays of a residual in the weights file, in :class:`Residual`'s field order.
RESIDUAL_ARRAYS: tuple[str, ...] = ("residual.eta_edges", "residual.log_pt",
                                    "residual.log_factor")


@dataclass(frozen=True)
class Residual:
    """The residual calibration of a model (see the module docstring): ``eta_edges`` float64
    ``(E + 1,)`` (|eta| bins; a jet beyond the last edge takes the last bin), ``log_pt`` and
    ``log_factor`` float64 ``(E, K)``: per bin, ``ln pT_net`` knots [ln GeV] (strictly
    ascending) and the ``ln`` of the factor there."""

    eta_edges: np.ndarray
    log_pt: np.ndarray
    log_factor: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(RESIDUAL_ARRAYS, (np.asarray(self.eta_edges, dtype=np.float64),
                                          np.asarray(self.log_pt, dtype=np.float64),
                                          np.asarray(self.log_factor, dtype=np.float64)),
                        strict=True))


def check_residual(r: Residual, where: str) -> None:
    """:class:`ModelError` naming ``where`` and the array for a malformed residual."""
    edges, knots, values = (np.asarray(a) for a in (r.eta_edges, r.log_pt, r.log_factor))
    if edges.ndim != 1 or edges.size < 2 or edges[0] != 0 or np.any(np.diff(edges) <= 0):
        raise ModelError(f"{where}: array 'residual.eta_edges' {edges.tolist()} must ascend "
                         "strictly from 0, at least two edges")
    shape = (edges.size - 1, knots.shape[1] if knots.ndim == 2 else -1)
    for name, arr in (("residual.log_pt", knots), ("residual.log_factor", values)):
        if arr.ndim != 2 or arr.shape != shape or shape[1] < 1:
            raise ModelError(f"{where}: array {name!r} has shape {arr.shape}, expected "
                             f"({shape[0]}, K) with K >= 1 (one row per |eta| bin)")
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"{where}: array {name!r} has non-finite values")
    if np.any(np.diff(knots, axis=1) <= 0):
        raise ModelError(f"{where}: array 'residual.log_pt': knots must ascend strictly in "
                         "every row")


def calibrated_log_factor(log_net: Any, pt_raw: Any, eta: Any, residual: Residual | None,
                          xp: Any = np) -> tuple[Any, Any]:
    """``(ln factor, ln residual)`` per jet: the network's ``log_net`` (its first output) plus
    the residual at ``(ln(pT_raw exp(log_net)), |eta|)`` (zero without one).  ``pt_raw``
    [GeV]; float64 arrays of ``xp`` (NumPy or CuPy: the same code on every backend; the
    residual's arrays may already be on the device)."""
    log_net = xp.asarray(log_net, dtype=xp.float64)
    if residual is None or log_net.shape[0] == 0:
        zero = xp.zeros_like(log_net)
        return log_net + zero, zero
    knots = xp.asarray(residual.log_pt, dtype=xp.float64)
    values = xp.asarray(residual.log_factor, dtype=xp.float64)
    edges = xp.asarray(residual.eta_edges, dtype=xp.float64)
    # a jet of zero raw pT (none from antikt) takes the first knot's value
    x = xp.log(xp.maximum(xp.asarray(pt_raw, dtype=xp.float64), 1e-300)) + log_net
    n_bins = int(knots.shape[0])
    row = xp.clip(xp.searchsorted(edges, xp.abs(xp.asarray(eta, dtype=xp.float64)),
                                  side="right") - 1, 0, n_bins - 1)
    res = xp.zeros_like(log_net)
    for i in range(n_bins):
        res = xp.where(row == i, xp.interp(x, knots[i], values[i]), res)
    return log_net + res, res


@dataclass(frozen=True)
class JetRegression:
    """A loaded jet-regression model (see the module docstring).

    ``weights``/``biases``: float32 ``(out, in)`` / ``(out,)`` per layer, in order;
    ``features`` (names from :data:`FEATURES`) with ``feature_mean``/``feature_std`` (float32);
    ``outputs`` (names from :data:`OUTPUTS`); ``meta`` (training provenance); ``source`` the
    file read; ``residual`` the residual calibration, if any.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    features: tuple[str, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    outputs: tuple[str, ...] = OUTPUTS[:1]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    residual: Residual | None = None

    @property
    def n_parameters(self) -> int:
        return int(sum(w.size + b.size for w, b in zip(self.weights, self.biases, strict=True)))

    @property
    def widths(self) -> tuple[int, ...]:
        """Input width, then each layer's output width."""
        return (len(self.features), *(int(w.shape[0]) for w in self.weights))

    def feature_index(self) -> np.ndarray:
        """Column of each of the model's features in :func:`jet_features_reference`'s matrix."""
        return np.array([FEATURE_NAMES.index(n) for n in self.features], dtype=np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz arrays of the model (:func:`save_model`)."""
        out: dict[str, np.ndarray] = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            out[f"layer{i}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
            out[f"layer{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
        out["feature_mean"] = np.asarray(self.feature_mean, dtype=np.float32)
        out["feature_std"] = np.asarray(self.feature_std, dtype=np.float32)
        out["features"] = np.array(self.features, dtype=str)
        out["outputs"] = np.array(self.outputs, dtype=str)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **self.meta}
        out["meta"] = np.array(json.dumps(meta, sort_keys=True))
        if self.residual is not None:
            out.update(self.residual.arrays())
        return out


def validate(m: JetRegression, where: str = "") -> None:
    """Check a model's structure; :class:`ModelError` naming ``where``, the array and shapes."""
    where = where or m.source
    unknown = [n for n in m.features if n not in FEATURES]
    if unknown or len(set(m.features)) != len(m.features) or not m.features:
        raise ModelError(f"{where}: features {list(m.features)}: each must be one of "
                         f"{', '.join(FEATURES)}, at least one, none twice")
    if not (1 <= len(m.outputs) <= len(OUTPUTS)) or tuple(m.outputs) != OUTPUTS[:len(m.outputs)]:
        raise ModelError(f"{where}: outputs {list(m.outputs)}; expected {list(OUTPUTS[:1])} or "
                         f"{list(OUTPUTS)}")
    nf = len(m.features)
    for name, arr in (("feature_mean", m.feature_mean), ("feature_std", m.feature_std)):
        arr = np.asarray(arr)
        if arr.shape != (nf,):
            raise ModelError(f"{where}: array {name!r} has shape {arr.shape}, expected ({nf},) "
                             "(one per feature)")
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"{where}: array {name!r} has non-finite values")
    if not np.all(np.asarray(m.feature_std) > 0):
        raise ModelError(f"{where}: array 'feature_std' must be > 0 for every feature")
    if not m.weights or len(m.weights) != len(m.biases):
        raise ModelError(f"{where}: a model needs layer0 ... layerN, each with a weight and a "
                         f"bias; got {len(m.weights)} weights and {len(m.biases)} biases")
    width = nf
    for i, (w, b) in enumerate(zip(m.weights, m.biases, strict=True)):
        last = i == len(m.weights) - 1
        out = len(m.outputs) if last else (int(w.shape[0]) if w.ndim == 2 else -1)
        for name, arr, shape in ((f"layer{i}.weight", w, (out, width)),
                                 (f"layer{i}.bias", b, (out,))):
            if tuple(arr.shape) != shape:
                raise ModelError(f"{where}: array {name!r} has shape {tuple(arr.shape)}, "
                                 f"expected {shape}")
            if arr.dtype != np.float32:
                raise ModelError(f"{where}: array {name!r} is {arr.dtype}, expected float32")
            if not np.all(np.isfinite(arr)):
                raise ModelError(f"{where}: array {name!r} has non-finite values")
        if out > MAX_WIDTH:
            raise ModelError(f"{where}: layer{i} has {out} units; the kernels take at most "
                             f"{MAX_WIDTH}")
        width = out
    if m.residual is not None:
        check_residual(m.residual, where)


def random_model(seed: int = 0, hidden: tuple[int, ...] = (32, 32),
                 features: tuple[str, ...] = DEFAULT_FEATURES, n_outputs: int = 2,
                 mean: np.ndarray | None = None, std: np.ndarray | None = None
                 ) -> JetRegression:
    """A model with random weights (He-style scale), for tests: unit standardisation unless
    ``mean``/``std`` are given."""
    rng = np.random.default_rng(seed)
    widths = (len(features), *hidden, n_outputs)
    weights, biases = [], []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        weights.append((rng.standard_normal((b, a)) * math.sqrt(2.0 / a)).astype(np.float32))
        biases.append((rng.standard_normal(b) * 0.1).astype(np.float32))
    nf = len(features)
    m = JetRegression(tuple(weights), tuple(biases), tuple(features),
                      np.zeros(nf, np.float32) if mean is None else np.asarray(mean, np.float32),
                      np.ones(nf, np.float32) if std is None else np.asarray(std, np.float32),
                      OUTPUTS[:n_outputs])
    validate(m)
    return m


def standardise(features: np.ndarray, m: JetRegression) -> np.ndarray:
    """The network's input (float32 ``(n, F)``) from :func:`jet_features_reference`'s matrix."""
    f = np.asarray(features)[:, m.feature_index()].astype(np.float32)
    return (f - m.feature_mean) / m.feature_std


def forward_reference(x: np.ndarray, m: JetRegression) -> np.ndarray:
    """The network on standardised inputs ``x`` (float32 ``(n, F)``): float32 ``(n, n_out)``."""
    h = np.asarray(x, dtype=np.float32)
    for i, (w, b) in enumerate(zip(m.weights, m.biases, strict=True)):
        h = h @ w.T + b
        if i < len(m.weights) - 1:
            h = np.maximum(h, np.float32(0.0))
    return h.astype(np.float32)


def flat_params(m: JetRegression) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' form of the weights: ``params`` (float32, every layer's weight transposed
    to ``(in, out)`` in C order, then its bias) and ``layout`` (int64 ``(n_layers, 3)``: out
    width, in width, offset in ``params`` of the weight; the bias follows it)."""
    parts, layout, pos = [], [], 0
    for w, b in zip(m.weights, m.biases, strict=True):
        layout.append((int(w.shape[0]), int(w.shape[1]), pos))
        parts += [np.ascontiguousarray(w.T).ravel(), b.ravel()]
        pos += w.size + b.size
    return (np.concatenate(parts).astype(np.float32),
            np.asarray(layout, dtype=np.int64).reshape(-1, 3))


# -- files ---------------------------------------------------------------------------------------
def save_model(m: JetRegression, path: str | Path) -> Path:
    """Write ``m`` to ``path`` (``.npz`` added when missing); :class:`ModelError` for a file
    over :data:`MAX_FILE_BYTES`."""
    validate(m)
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **m.arrays())
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ModelError(f"{path}: {size} bytes, over the {MAX_FILE_BYTES}-byte budget of a "
                         "jet-regression model")
    return path


def model_path(spec: str | Path) -> Path:
    """The file of ``builtin:NAME`` (in ``hltemu/models``) or a path (``.npz`` optional)."""
    path = spec_path(spec)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_model(spec: str | Path) -> JetRegression:
    """Read and check a model (``builtin:NAME`` or a path); :class:`ModelError` naming the file
    for a missing or corrupt file, a missing array or one of the wrong shape or dtype."""
    path = model_path(spec)
    if not path.is_file():
        hint = ""
        if str(spec).startswith(BUILTIN_PREFIX):
            shipped = sorted(p.stem for p in shipped_dir().glob("jet_regression*.npz"))
            hint = f"; shipped: {', '.join('builtin:' + s for s in shipped) or 'none'}"
        raise ModelError(f"jet-regression weights file {path} does not exist{hint}")
    arrays = read_arrays(path, ModelError)
    required = ("meta", "features", "outputs", "feature_mean", "feature_std", "layer0.weight",
                "layer0.bias")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ModelError(f"{path}: missing array(s) {missing}; a jet-regression file has "
                         f"{list(required)} and layer1 ... layerN")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: 'meta' is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path}: not a jet-regression file (meta format "
                         f"{meta.get('format') if isinstance(meta, dict) else meta!r}, expected "
                         f"{FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelError(f"{path}: version {meta.get('version')!r}; this hltemu reads version "
                         f"{FORMAT_VERSION}")
    n_layers = 0
    while f"layer{n_layers}.weight" in arrays:
        n_layers += 1
    layers = [f"layer{i}.{k}" for i in range(n_layers) for k in ("weight", "bias")]
    present = [k for k in RESIDUAL_ARRAYS if k in arrays]
    if present and len(present) != len(RESIDUAL_ARRAYS):
        raise ModelError(f"{path}: a residual needs all of {list(RESIDUAL_ARRAYS)}; the file "
                         f"has only {present}")
    extra = sorted(set(arrays) - set(layers) - set(required) - set(RESIDUAL_ARRAYS))
    if extra:
        raise ModelError(f"{path}: unexpected array(s) {extra}")
    absent = [k for k in layers if k not in arrays]
    if absent:
        raise ModelError(f"{path}: missing array(s) {absent}")
    m = JetRegression(
        tuple(arrays[f"layer{i}.weight"] for i in range(n_layers)),
        tuple(arrays[f"layer{i}.bias"] for i in range(n_layers)),
        tuple(str(s) for s in np.atleast_1d(arrays["features"])),
        arrays["feature_mean"], arrays["feature_std"],
        tuple(str(s) for s in np.atleast_1d(arrays["outputs"])),
        {k: v for k, v in meta.items() if k not in ("format", "version")}, str(path),
        Residual(*(arrays[k] for k in RESIDUAL_ARRAYS)) if present else None)
    validate(m, str(path))
    return m


@functools.lru_cache(maxsize=8)
def _cached(path: str, stamp: tuple[int, int]) -> JetRegression:
    return load_model(path)


def get_model(spec: str) -> JetRegression:
    """:func:`load_model`, cached per file and modification time."""
    path = model_path(spec)
    if not path.is_file():
        return load_model(spec)  # raises, naming the file
    st = path.stat()
    return _cached(str(spec), (st.st_mtime_ns, st.st_size))
