"""Stage ``doublet_cnn``: a small CNN scores every pixel doublet; doublets under a working
point are dropped.

The network (:mod:`hltemu.cnn`) encodes each hit's pixel-charge pad (``PixelHit.pad``) with two
convolutions and a dense layer, then scores each doublet from the two hits' embeddings, the
doublet's geometry (radii, z, dr, dz, dphi, z0, curvature, cluster sizes and the cluster lengths
its r-z angle predicts) and its two layer ids.  Trained with PyTorch (``hltemu
train-doublet-cnn``, :mod:`hltemu.cnn_train`), shipped as ``hltemu/models/doublet_cnn.npz`` +
``.json``, inferred here without PyTorch.

Needs ``PixelHit`` (column ``pad``) and ``doublets`` (stage ``doublets``).  Adds
``filtered_doublets``: the doublets with ``score >= threshold``, every column of
``doublets`` plus ``score`` (float32 in [0, 1], higher for doublets more likely to have both
hits from one particle), in the same order (per event, by inner then outer hit).
``doublets`` itself is left as it was, so the cut-based set and the CNN-filtered set can be
compared.

Working points
--------------
``threshold_mode = "single"`` (the default): one threshold for every doublet,
``working_point`` or, when negative, the model's own, which keeps 99% of all true doublets on
its validation sample.  Its efficiency falls with the particle's pT and differs between layer
pairs (on 100 held-out ttbar PU50 events: 99.0% of prompt particles' doublets at 0.9-2 GeV,
95.8% above 5 GeV, 96.5% on the worst layer pair, FPix -z disk 1 to 3).

``threshold_mode = "table"``: a threshold per layer pair and bin of the doublet's
``|curvature|`` (its implied pT, ``0.01 C B / |curvature|``), looked up from observables
only (``inner_layer``, ``outer_layer``, ``curvature``), never from truth.  The default table
(:data:`DEFAULT_TABLE_PAIRS`, :data:`DEFAULT_CURVATURE_EDGES`, :data:`DEFAULT_THRESHOLDS`) was
chosen for the shipped model on 200 ttbar PU50 events (seed 5050) by
``examples/doublet_cnn_downstream.py choose``: it removes as many fake doublets as it can while
keeping >= 99.45% of the doublets of prompt particles above 0.9 GeV per layer pair and per pT
bin (0.9-2, 2-5, > 5 GeV) and >= 99% per pair and pT bin together.  On 100 held-out events
(seed 6060) it keeps 99.4%, 99.3% and 99.3% in the three pT bins, >= 99.1% on every layer
pair, and removes 75.8% of the fakes (the single working point: 79.1%); per layer pair and
pT bin together 9 of 57 cells are under 99% (single working point: 27), the lowest 96.9% (93
of 96 doublets above 5 GeV on BPix1-FPix -z disk 2).  A doublet on a layer pair the table
does not list gets the single working point.  The table is tied to the
model it was chosen for: with other ``weights``, choose it again.

Backends
--------
``reference``: NumPy array code (:func:`hltemu.cnn.encode_reference`,
:func:`hltemu.cnn.head_reference`), written to be read.  ``cpu``: Numba kernels, ``prange``
over hits (encoder) and over doublets (head).  ``cuda``: one thread per hit and per doublet,
the same scalar functions compiled as device functions (:mod:`hltemu.kernels.doublet_cnn`).
Only hits that belong to a doublet are encoded.  The features are computed with ``xp``
element-wise operations, bit-identical on every backend.  Everything is float32; scores of
different backends agree within :data:`hltemu.cnn.SCORE_TOLERANCE` (3e-5), so keep/drop
decisions can differ only for doublets whose score is that close to the working point.  The
table's thresholds are looked up with ``xp`` after the scores (:func:`doublet_thresholds`): the
same threshold for a doublet on every backend.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch
from hltemu.cnn import (
    DOUBLET_INPUTS,
    DoubletCnn,
    ModelError,
    encode_reference,
    head_reference,
    load_model,
    model_paths,
    normalise,
    raw_features,
)
from hltemu.config import ConfigError, param
from hltemu.geometry import N_PIXEL_LAYERS
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Stage, check_only, dispatch, register
from hltemu.xpsafe import any_true, item

#: ``threshold_mode`` choices: one threshold, or the table over observables.
THRESHOLD_MODES: tuple[str, ...] = ("single", "table")

#: Default |curvature| bin edges [1/cm] of the threshold table: ``0.01 C B / pT`` at the
#: default field (3.8 T) for implied pT = 12, 6, 3.5, 2.2, 1.6, 1.2, 0.9 GeV, rounded to 4
#: digits.  Bin 0 is the straightest doublets (implied pT > 12 GeV), bin 7 the most curved
#: (implied pT < 0.9 GeV, down to the doublets stage's own pT cut).
DEFAULT_CURVATURE_EDGES: tuple[float, ...] = (
    0.0009493, 0.001899, 0.003255, 0.005178, 0.00712, 0.009493, 0.01266)
#: Default (inner, outer) layer ids of the table's rows: the 19 layer pairs of the default
#: ``[doublets] layer_pairs`` (0-3 BPix1-4, 4-6 FPix +z disks 1-3, 7-9 FPix -z disks 1-3).
DEFAULT_TABLE_PAIRS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (0, 4), (0, 5), (0, 7), (0, 8), (1, 2), (1, 3), (1, 4), (1, 7), (2, 3),
    (2, 4), (2, 7), (4, 5), (4, 6), (5, 6), (7, 8), (7, 9), (8, 9))
#: Default score thresholds, one row per pair of :data:`DEFAULT_TABLE_PAIRS`, one column per
#: |curvature| bin (straightest first); chosen as the module docstring says.
DEFAULT_THRESHOLDS: tuple[tuple[float, ...], ...] = (
    (0.1281, 0.1480, 0.1192, 0.1591, 0.2283, 0.2283, 0.3275, 0.8373),  # (0, 1)
    (0.0719, 0.0434, 0.0375, 0.0773, 0.0669, 0.1032, 0.1109, 0.6742),  # (0, 2)
    (0.0831, 0.0622, 0.0831, 0.1377, 0.1192, 0.1591, 0.1838, 0.7790),  # (0, 4)
    (0.0281, 0.0501, 0.1480, 0.1032, 0.1838, 0.1838, 0.1710, 0.7790),  # (0, 5)
    (0.0960, 0.0669, 0.0375, 0.1109, 0.1591, 0.1591, 0.2124, 0.6273),  # (0, 7)
    (0.1192, 0.0960, 0.1710, 0.0893, 0.1109, 0.1377, 0.2124, 0.7247),  # (0, 8)
    (0.1838, 0.1281, 0.1109, 0.2124, 0.2124, 0.3784, 0.3784, 0.9000),  # (1, 2)
    (0.0539, 0.0719, 0.0579, 0.0960, 0.0773, 0.1032, 0.1032, 0.9000),  # (1, 3)
    (0.1838, 0.2637, 0.3275, 0.3275, 0.3047, 0.3047, 0.3521, 0.9000),  # (1, 4)
    (0.1480, 0.0960, 0.1281, 0.2283, 0.3275, 0.2637, 0.3275, 0.9000),  # (1, 7)
    (0.2124, 0.0893, 0.1032, 0.2835, 0.1976, 0.2454, 0.3275, 0.9000),  # (2, 3)
    (0.0000, 0.0000, 0.5836, 0.5836, 0.6273, 0.5836, 0.5836, 0.9000),  # (2, 4)
    (0.0000, 0.0000, 0.0000, 0.5429, 0.5051, 0.3275, 0.2637, 0.9000),  # (2, 7)
    (0.1591, 0.0000, 0.0000, 0.2283, 0.0893, 0.1480, 0.3275, 0.8373),  # (4, 5)
    (0.1838, 0.0000, 0.0773, 0.0539, 0.0375, 0.0773, 0.1377, 0.6742),  # (4, 6)
    (0.5051, 0.0000, 0.0000, 0.1710, 0.1976, 0.4067, 0.2637, 0.9000),  # (5, 6)
    (0.0000, 0.0000, 0.0000, 0.1281, 0.1281, 0.2637, 0.1838, 0.8373),  # (7, 8)
    (0.0831, 0.0000, 0.0669, 0.0719, 0.0773, 0.0773, 0.0375, 0.6742),  # (7, 9)
    (0.0000, 0.0000, 0.0000, 0.2124, 0.1710, 0.3275, 0.4067, 0.9000),  # (8, 9)
)


def table_thresholds(cfg: Any) -> tuple[tuple[float, ...], ...]:
    """``cfg.thresholds``, or :data:`DEFAULT_THRESHOLDS` when it is empty."""
    return tuple(cfg.thresholds) or DEFAULT_THRESHOLDS


def check_table(curvature_edges: Any, table_pairs: Any, thresholds: Any,
                n_layers: int = N_PIXEL_LAYERS) -> None:
    """:class:`ConfigError` naming the key and the value when the threshold table is not
    ascending finite edges [1/cm], distinct (inner, outer) layer-id pairs in ``[0,
    n_layers)``, and one row of ``len(curvature_edges) + 1`` thresholds in [0, 1] per pair
    (the rows not checked when ``thresholds`` is None)."""
    edges = tuple(curvature_edges)
    if (not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and v >= 0 for v in edges)
            or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=False))):
        raise ConfigError(f"[doublet_cnn] curvature_edges must be finite numbers >= 0 [1/cm] in "
                          f"ascending order, got {curvature_edges!r}")
    pairs = tuple(table_pairs)
    for pair in pairs:
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n_layers
                           for v in pair)):
            raise ConfigError(f"[doublet_cnn] table_pairs: {pair!r} is not an (inner, outer) pair "
                              f"of pixel layer ids 0-{n_layers - 1}")
    if len({tuple(p) for p in pairs}) != len(pairs):
        raise ConfigError(f"[doublet_cnn] table_pairs lists a layer pair twice: {pairs!r}")
    if thresholds is None:
        return
    rows = tuple(thresholds)
    if len(rows) != len(pairs):
        raise ConfigError(f"[doublet_cnn] thresholds has {len(rows)} rows; table_pairs has "
                          f"{len(pairs)} pairs (one row each)")
    for pair, row in zip(pairs, rows, strict=True):
        if (not isinstance(row, (tuple, list)) or len(row) != len(edges) + 1
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and 0.0 <= v <= 1.0 for v in row)):
            raise ConfigError(f"[doublet_cnn] thresholds row of layer pair {tuple(pair)}: "
                              f"expected {len(edges) + 1} numbers in [0, 1] (one per |curvature| "
                              f"bin of curvature_edges), got {row!r}")


@dataclass(frozen=True)
class DoubletCnnConfig:
    """Stage ``doublet_cnn``: a small CNN scores each pixel doublet; doublets with a score below
    the working point are dropped (kept ones go to ``filtered_doublets``).

    ``weights`` names a model as ``builtin:NAME`` (shipped in ``hltemu/models``) or a path to
    ``NAME.json`` + ``NAME.npz`` (either file or the common stem), e.g. one written by
    ``hltemu train-doublet-cnn``.
    """

    weights: str = param("builtin:doublet_cnn", "", "doublet-CNN model (NAME.json + NAME.npz)",
                         path=True)
    working_point: float = param(-1.0, "", "keep doublets with score >= this (0-1); negative: "
                                 "the model's own, which keeps 99% of true doublets")
    chunk_size: int = param(262144, "", "hits or doublets per kernel launch (bounds memory)")
    threshold_mode: str = param("single", "", "'single': one threshold (working_point) for "
                                "every doublet; 'table': a threshold per layer pair and "
                                "|curvature| bin (table_pairs, curvature_edges, thresholds)")
    curvature_edges: tuple = param(
        DEFAULT_CURVATURE_EDGES, "1/cm", "|curvature| bin edges of the threshold table, "
        "ascending (implied pT 12, 6, 3.5, 2.2, 1.6, 1.2, 0.9 GeV at 3.8 T)")
    table_pairs: tuple = param(DEFAULT_TABLE_PAIRS, "", "(inner, outer) pixel layer ids of "
                               "the rows of thresholds; other pairs get working_point")
    thresholds: tuple = param((), "", "score threshold (0-1) per row of table_pairs and "
                              "|curvature| bin (len(curvature_edges) + 1 each); empty: the "
                              "built-in table chosen for the shipped model")

    def __post_init__(self) -> None:
        if not self.working_point <= 1.0:
            raise ConfigError(f"[doublet_cnn] working_point must be <= 1 (negative: the model's "
                              f"own), got {self.working_point}")
        if self.chunk_size < 1:
            raise ConfigError(f"[doublet_cnn] chunk_size must be >= 1, got {self.chunk_size}")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ConfigError(f"[doublet_cnn] threshold_mode = {self.threshold_mode!r}; "
                              f"choices: {', '.join(THRESHOLD_MODES)}")
        if not self.thresholds and (tuple(self.curvature_edges) != DEFAULT_CURVATURE_EDGES
                                    or tuple(map(tuple, self.table_pairs))
                                    != DEFAULT_TABLE_PAIRS):
            check_table(self.curvature_edges, self.table_pairs, None)
            raise ConfigError("[doublet_cnn] thresholds is empty (the built-in table, which is "
                              "for the default curvature_edges and table_pairs); give "
                              "thresholds for the curvature_edges and table_pairs you set")
        check_table(self.curvature_edges, self.table_pairs, table_thresholds(self))


#: Name of the collection of kept doublets.
OUTPUT = "filtered_doublets"


# -- the model, loaded once per file version ---------------------------------------------------
@functools.lru_cache(maxsize=8)
def _cached_model(spec: str, stamp: tuple[int, int]) -> DoubletCnn:
    return load_model(spec)


def get_model(spec: str) -> DoubletCnn:
    """The model ``spec`` names (see :func:`hltemu.cnn.load_model`), read once and cached until
    either of its files changes."""
    json_path, npz_path = model_paths(spec)
    try:
        stamp = (json_path.stat().st_mtime_ns, npz_path.stat().st_mtime_ns)
    except OSError:
        return load_model(spec)  # raises ModelError naming the missing file
    return _cached_model(str(spec), stamp)


# -- inputs --------------------------------------------------------------------------------------
def _check_inputs(hits: Collection, doublets: Collection, model: DoubletCnn, be: Backend
                  ) -> tuple[Any, Any]:
    """Validate the inputs; return the PixelHit rows (global, int64) of every doublet's inner
    and outer hit."""
    xp = be.xp
    if "pad" not in hits:
        raise PipelineError(f"stage 'doublet_cnn' needs the PixelHit column 'pad' (pixel-charge "
                            f"pads); the collection has {sorted(hits.columns)}")
    pad = hits["pad"]
    if tuple(pad.shape[1:]) != tuple(model.pad_shape):
        raise PipelineError(f"PixelHit.pad has pads of shape {tuple(pad.shape[1:])}; the doublet "
                            f"CNN {model.source} was trained on {tuple(model.pad_shape)}")
    missing = [c for c in DOUBLET_INPUTS if c not in doublets]
    if missing:
        raise PipelineError(f"stage 'doublet_cnn' needs doublets column(s) {missing}; the "
                            f"collection has {sorted(doublets.columns)}")
    if doublets.n_events != hits.n_events:
        raise PipelineError(f"doublets has {doublets.n_events} events, PixelHit "
                            f"{hits.n_events}")
    n = doublets.size
    rows = xp.arange(n, dtype=xp.int64)
    event = xp.searchsorted(doublets.offsets[1:], rows, side="right")
    first = hits.offsets[event]
    n_hits = hits.offsets[event + 1] - first
    out = []
    for name in ("inner", "outer"):
        local = xp.asarray(doublets[name], dtype=xp.int64)
        bad = (local < 0) | (local >= n_hits)
        if n and any_true(bad):
            k = int(be.to_host(xp.argmax(bad)))
            raise PipelineError(
                f"doublets.{name} = {int(be.to_host(local[k]))} in event "
                f"{int(be.to_host(event[k]))} is not a PixelHit row of that event (it has "
                f"{int(be.to_host(n_hits[k]))} hits)")
        out.append(first + local)
    for name in ("inner_layer", "outer_layer"):
        layer = doublets[name]
        bad = (layer < 0) | (layer >= model.n_layers)
        if n and any_true(bad):
            value = int(be.to_host(layer[xp.argmax(bad)]))
            raise PipelineError(f"doublets.{name} has the value {value}; the doublet CNN knows "
                                f"layer ids 0-{model.n_layers - 1}")
    return out[0], out[1]


def _features(doublets: Collection, model: DoubletCnn, start: int, stop: int, xp: Any,
              mean: Any = None, std: Any = None) -> Any:
    """Normalised features of doublets ``start:stop`` (float32 ``(n, F)``), checked finite;
    ``mean``/``std``: the model's on the device (:class:`Prepared`)."""
    cols = {c: doublets[c][start:stop] for c in DOUBLET_INPUTS}
    raw = raw_features(cols, model.features, xp)
    bad = ~xp.isfinite(raw)
    if any_true(bad):
        row, col = (int(v) for v in np.unravel_index(item(xp.argmax(bad)), raw.shape))
        raise PipelineError(f"doublet CNN feature {model.features[col]!r} is not finite for "
                            f"doublet row {start + row} (check the doublets columns it reads)")
    return xp.ascontiguousarray(normalise(model, raw, xp, mean, std))


# -- scoring -------------------------------------------------------------------------------------
def _cuda_encoder(model: DoubletCnn) -> Any:
    """The CUDA encoder kernel with per-thread scratch sized for ``model`` (one kernel per model
    shape, see :func:`hltemu.kernels.doublet_cnn.encode_hits_cuda_kernel`); a model too large
    for it is a :class:`PipelineError` naming the model file and its sizes."""
    from hltemu.kernels.doublet_cnn import encode_hits_cuda_kernel, scratch_sizes

    sizes = scratch_sizes(model.pad_shape, model.arrays["conv1.weight"].shape,
                          model.arrays["conv2.weight"].shape)
    try:
        return encode_hits_cuda_kernel(*sizes)
    except ValueError as exc:
        raise PipelineError(f"doublet CNN {model.source} (conv1 {model.conv1_out}, conv2 "
                            f"{model.conv2_out}): {exc}") from None


class Prepared(NamedTuple):
    """What :func:`prepare_model` builds once per (model, backend): the model and its weights
    on the backend's device (``arrays``; in ``encoder``, ``(k1, w1, b1, k2, w2, b2, we, be)``
    with convolution weights as ``(out, in * k * k)`` rows, as the kernels take them)."""

    model: DoubletCnn
    arrays: dict[str, Any]
    encoder: tuple[Any, ...]
    feature_mean: Any
    feature_std: Any
    #: the threshold of every (inner layer, outer layer, |curvature| bin), float32
    #: ``(n_layers, n_layers, n_bins)``, and the bin edges (float64, 1/cm), on the device;
    #: None in ``threshold_mode = "single"``
    threshold_lookup: Any = None
    curvature_edges: Any = None


def prepare_model(model: DoubletCnn, backend: Backend) -> Prepared:
    """Upload ``model``'s weights to ``backend`` (once; the stage caches it per config)."""
    a = {k: backend.to_device(np.ascontiguousarray(v)) for k, v in model.arrays.items()}
    k1, k2 = int(model.arrays["conv1.weight"].shape[2]), int(model.arrays["conv2.weight"].shape[2])
    enc = (k1, a["conv1.weight"].reshape(a["conv1.weight"].shape[0], -1), a["conv1.bias"], k2,
           a["conv2.weight"].reshape(a["conv2.weight"].shape[0], -1), a["conv2.bias"],
           a["embed.weight"], a["embed.bias"])
    mean, std = (backend.to_device(np.asarray(v, dtype=np.float32))
                 for v in (model.feature_mean, model.feature_std))
    return Prepared(model, a, enc, mean, std)


def prepare(cfg: DoubletCnnConfig, backend: Backend) -> Prepared:
    """The model of ``cfg.weights`` (read once; a :class:`PipelineError` names a bad file)
    with its weights on ``backend``, and in ``threshold_mode = "table"`` the threshold lookup
    (:func:`threshold_lookup`) on ``backend``."""
    try:
        model = get_model(cfg.weights)
    except ModelError as exc:
        raise PipelineError(f"[doublet_cnn] weights: {exc}") from None
    prep = prepare_model(model, backend)
    if cfg.threshold_mode == "single":
        return prep
    return prep._replace(
        threshold_lookup=backend.to_device(threshold_lookup(cfg, model)),
        curvature_edges=backend.to_device(np.asarray(cfg.curvature_edges, dtype=np.float64)))


def threshold_lookup(cfg: DoubletCnnConfig, model: DoubletCnn) -> np.ndarray:
    """The table of ``cfg`` as a lookup, float32 ``(n_layers, n_layers, n_bins)``: the
    threshold of a doublet from ``inner_layer`` to ``outer_layer`` in |curvature| bin ``b``
    (``n_bins = len(curvature_edges) + 1``); pairs the table does not list get the single
    working point (:func:`working_point`).  Layer ids the model does not know are an
    error naming them."""
    n = model.n_layers
    bad = [p for p in cfg.table_pairs if max(p) >= n]
    if bad:
        raise PipelineError(f"[doublet_cnn] table_pairs {bad} name layer ids the doublet CNN "
                            f"{model.source} does not know (0-{n - 1})")
    lookup = np.full((n, n, len(cfg.curvature_edges) + 1), working_point(cfg, model),
                     dtype=np.float32)
    for (inner, outer), row in zip(cfg.table_pairs, table_thresholds(cfg), strict=True):
        lookup[inner, outer, :] = np.asarray(row, dtype=np.float32)
    return lookup


def doublet_thresholds(doublets: Collection, prep: Prepared, xp: Any) -> Any:
    """Each doublet's threshold from its observables (``inner_layer``, ``outer_layer``,
    ``|curvature|`` [1/cm]) through ``prep.threshold_lookup``: float32 ``(doublets.size,)``.
    The bin is ``searchsorted(curvature_edges, |curvature|, 'right')`` in float64 (an exact
    comparison: the same bin on every backend); nothing here reads truth."""
    curvature = xp.abs(xp.asarray(doublets["curvature"]).astype(xp.float64))
    k = xp.searchsorted(prep.curvature_edges, curvature, side="right")
    inner = xp.asarray(doublets["inner_layer"], dtype=xp.int64)
    outer = xp.asarray(doublets["outer_layer"], dtype=xp.int64)
    return prep.threshold_lookup[inner, outer, k]


# -- the three ways to run the encoder and the head on one chunk ---------------------------------
def _encode_reference(prep: Prepared, rows: Any, pads: Any, scale: Any, emb: Any) -> None:
    emb[:] = encode_reference(prep.model, pads[rows])


def _encode_cpu(prep: Prepared, rows: Any, pads: Any, scale: Any, emb: Any) -> None:
    from hltemu.kernels.doublet_cnn import encode_hits_cpu

    encode_hits_cpu(rows, pads, scale, *prep.encoder, emb)


def _encode_cuda(prep: Prepared, rows: Any, pads: Any, scale: Any, emb: Any) -> None:
    kernel = _cuda_encoder(prep.model)  # built once per model shape
    kernel[blocks(rows.shape[0]), THREADS_PER_BLOCK](rows, pads, scale, *prep.encoder, emb)


def _head_reference(prep: Prepared, xp: Any, inner: Any, outer: Any, emb: Any, feats: Any,
                    inner_layer: Any, outer_layer: Any, out: Any) -> None:
    out[:] = head_reference(prep.model, emb[inner], emb[outer], feats, inner_layer, outer_layer)


def _head_cpu(prep: Prepared, xp: Any, inner: Any, outer: Any, emb: Any, feats: Any,
              inner_layer: Any, outer_layer: Any, out: Any) -> None:
    from hltemu.kernels.doublet_cnn import score_doublets_cpu

    a = prep.arrays
    score_doublets_cpu(inner, outer, emb, feats, inner_layer, outer_layer, prep.model.n_layers,
                       a["hidden.weight"], a["hidden.bias"], a["output.weight"],
                       a["output.bias"], out)


def _head_cuda(prep: Prepared, xp: Any, inner: Any, outer: Any, emb: Any, feats: Any,
               inner_layer: Any, outer_layer: Any, out: Any) -> None:
    from hltemu.kernels.doublet_cnn import score_doublets_cuda

    a = prep.arrays
    score_doublets_cuda[blocks(out.shape[0]), THREADS_PER_BLOCK](
        xp.ascontiguousarray(inner), xp.ascontiguousarray(outer), emb, feats,
        xp.ascontiguousarray(inner_layer), xp.ascontiguousarray(outer_layer),
        prep.model.n_layers, a["hidden.weight"], a["hidden.bias"], a["output.weight"],
        a["output.bias"], out)


#: (encode, head) of each backend: how a chunk of hits is encoded and a chunk of doublets
#: scored; the rest of :func:`score_doublets` is the same on every backend.
ENGINES: dict[str, tuple[Any, Any]] = {
    "reference": (_encode_reference, _head_reference),
    "cpu": (_encode_cpu, _head_cpu),
    "cuda": (_encode_cuda, _head_cuda),
}


def score_with(hits: Collection, doublets: Collection, prep: Prepared, be: Backend,
               engine: tuple[Any, Any], chunk_size: int = 1 << 18) -> Any:
    """CNN score of every doublet, float32 ``(doublets.size,)`` on ``be``, with ``engine``'s
    encoder and head.  ``hits``/``doublets`` are on ``be``.  Work is done ``chunk_size`` hits
    or doublets at a time, which bounds the memory of activations and features."""
    encode, head = engine
    model = prep.model
    xp = be.xp
    inner_row, outer_row = _check_inputs(hits, doublets, model, be)
    n = doublets.size
    scores = xp.zeros(n, dtype=xp.float32)
    if n == 0:
        return scores
    # hits that belong to a doublet, and each doublet hit's position among them
    used = xp.zeros(hits.size, dtype=xp.bool_)
    used[inner_row] = True
    used[outer_row] = True
    enc_rows = xp.nonzero(used)[0].astype(xp.int64)
    position = xp.cumsum(used.astype(xp.int64)) - 1
    inner_pos = position[inner_row].astype(xp.int32)
    outer_pos = position[outer_row].astype(xp.int32)
    pads = xp.ascontiguousarray(xp.asarray(hits["pad"], dtype=xp.float32))
    n_enc = int(enc_rows.shape[0])
    emb = xp.zeros((n_enc, model.n_embed), dtype=xp.float32)
    scale = np.float32(1.0 / model.pad_scale)
    for s in range(0, n_enc, chunk_size):
        e = min(s + chunk_size, n_enc)
        encode(prep, enc_rows[s:e], pads, scale, emb[s:e])

    inner_layer = xp.asarray(doublets["inner_layer"], dtype=xp.int32)
    outer_layer = xp.asarray(doublets["outer_layer"], dtype=xp.int32)
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        feats = _features(doublets, model, s, e, xp, prep.feature_mean, prep.feature_std)
        head(prep, xp, inner_pos[s:e], outer_pos[s:e], emb, feats, inner_layer[s:e],
             outer_layer[s:e], scores[s:e])
    return scores


def score_doublets(hits: Collection, doublets: Collection, model: DoubletCnn, be: Backend,
                   chunk_size: int = 1 << 18) -> Any:
    """CNN score of every doublet on ``be`` (:func:`score_with` with ``be``'s engine and the
    model's weights uploaded for this call; the stage keeps them on the device instead)."""
    engine = dispatch(ENGINES, be, "doublet-CNN scoring")
    return score_with(hits, doublets, prepare_model(model, be), be, engine, chunk_size)


def select_doublets(doublets: Collection, scores: Any, working_point: float | Any, xp: Any
                    ) -> Collection:
    """The doublets with ``score >= working_point``: every column plus ``score``, same order.
    ``working_point`` is one threshold or one per doublet (float32, :func:`doublet_thresholds`).
    """
    if np.ndim(working_point) == 0:
        working_point = np.float32(working_point)
    keep = scores >= working_point
    kept_before = xp.zeros(doublets.size + 1, dtype=xp.int64)
    if doublets.size:
        xp.cumsum(keep.astype(xp.int64), out=kept_before[1:])
    offsets = kept_before[doublets.offsets]
    idx = xp.nonzero(keep)[0]
    cols = {k: v[idx] for k, v in doublets.columns.items()}
    cols["score"] = scores[idx]
    return Collection(offsets, cols)


def check_model(cfg: DoubletCnnConfig) -> DoubletCnn:
    """The model ``cfg.weights`` names, read and checked (errors name the key and its files)."""
    try:
        return get_model(cfg.weights)
    except ConfigError as exc:
        raise type(exc)(f"[doublet_cnn] weights = {cfg.weights!r}: {exc}") from None


def working_point(cfg: DoubletCnnConfig, model: DoubletCnn) -> float:
    """The score threshold: ``cfg.working_point``, or the model's own when it is negative."""
    return model.working_point if cfg.working_point < 0 else float(cfg.working_point)


def _run(engine: tuple[Any, Any]) -> Any:
    def run(batch: EventBatch, cfg: DoubletCnnConfig, prep: Prepared) -> dict[str, Collection]:
        be, doublets = batch.backend, batch["doublets"]
        scores = score_with(batch["PixelHit"], doublets, prep, be, engine, cfg.chunk_size)
        cut = (working_point(cfg, prep.model) if prep.threshold_lookup is None
               else doublet_thresholds(doublets, prep, be.xp))
        return {OUTPUT: select_doublets(doublets, scores, cut, be.xp)}

    return run


run_reference = _run(ENGINES["reference"])
run_cpu = _run(ENGINES["cpu"])
run_cuda = _run(ENGINES["cuda"])


STAGE = register(Stage(
    name="doublet_cnn",
    needs=("PixelHit", "doublets"),
    adds=(OUTPUT,),
    config_type=DoubletCnnConfig,
    prepare=prepare,
    plan=check_only(check_model),
    counts_only=(OUTPUT,),
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="CNN over both hits' charge pads + doublet features; keeps doublets with score >= "
        "the working point, one or per layer pair and |curvature| bin (filtered_doublets)",
))
