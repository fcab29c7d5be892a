"""Stage ``doublet_cnn``: a small CNN scores every pixel doublet; doublets under a working
point are dropped.

The network (:mod:`hltemu.cnn`) encodes each hit's pixel-charge pad (``PixelHit.pad``) with two
convolutions and a dense layer, then scores each doublet from the two hits' embeddings, the
doublet's geometry (radii, z, dr, dz, dphi, z0, curvature, cluster sizes and the cluster lengths
its r-z angle predicts) and its two layer ids.  Trained with PyTorch (``hltemu
train-doublet-cnn``, :mod:`hltemu.cnn_train`), shipped as ``hltemu/models/doublet_cnn.npz`` +
``.json``, inferred here without PyTorch.

Needs ``PixelHit`` (column ``pad``) and ``doublets`` (stage ``doublets``).  Adds
``filtered_doublets``: the doublets with ``score >= working point``, every column of
``doublets`` plus ``score`` (float32 in [0, 1], higher for doublets more likely to have both
hits from one particle), in the same order (per event, by inner then outer hit).
``doublets`` itself is left as it was, so the cut-based set and the CNN-filtered set can be
compared.  The default working point (the model's) keeps 99% of true doublets on the
validation sample.

Backends
--------
``reference``: NumPy array code (:func:`hltemu.cnn.encode_reference`,
:func:`hltemu.cnn.head_reference`), written to be read.  ``cpu``: Numba kernels, ``prange``
over hits (encoder) and over doublets (head).  ``cuda``: one thread per hit and per doublet,
the same scalar functions compiled as device functions (:mod:`hltemu.kernels.doublet_cnn`).
Only hits that belong to a doublet are encoded.  The features are computed with ``xp``
element-wise operations, bit-identical on every backend.  Everything is float32; scores of
different backends agree within :data:`hltemu.cnn.SCORE_TOLERANCE` (3e-5), so keep/drop
decisions can differ only for doublets whose score is that close to the working point.
"""

from __future__ import annotations

import functools
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
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Stage, check_only, dispatch, register
from hltemu.xpsafe import any_true, item


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

    def __post_init__(self) -> None:
        if not self.working_point <= 1.0:
            raise ConfigError(f"[doublet_cnn] working_point must be <= 1 (negative: the model's "
                              f"own), got {self.working_point}")
        if self.chunk_size < 1:
            raise ConfigError(f"[doublet_cnn] chunk_size must be >= 1, got {self.chunk_size}")


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
    with its weights on ``backend``."""
    try:
        model = get_model(cfg.weights)
    except ModelError as exc:
        raise PipelineError(f"[doublet_cnn] weights: {exc}") from None
    return prepare_model(model, backend)


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


def select_doublets(doublets: Collection, scores: Any, working_point: float, xp: Any
                    ) -> Collection:
    """The doublets with ``score >= working_point``: every column plus ``score``, same order."""
    keep = scores >= np.float32(working_point)
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
        return {OUTPUT: select_doublets(doublets, scores, working_point(cfg, prep.model), be.xp)}

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
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="CNN over both hits' charge pads + doublet features; keeps doublets with score >= "
        "working point (filtered_doublets)",
))
