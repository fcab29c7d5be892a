"""The doublet CNN: architecture, weights files, input features and the NumPy forward pass.

The network gives a pixel doublet (stage ``doublets``) a score in [0, 1], higher when both hits
more likely come from one particle (trained with true doublets up-weighted, so the score ranks
rather than being a calibrated probability).  It has two parts:

* an **encoder**, applied to each *hit*: the hit's pixel-charge pad (``PixelHit.pad``,
  ``PIXEL_PAD_SHAPE`` pixels, electrons, divided by ``pad_scale``) through two 'valid' 2-D
  convolutions with ReLU and a dense layer with ReLU, giving an embedding of ``E`` numbers;
* a **head**, applied to each *doublet*: the embeddings of its inner and outer hit, the
  normalised doublet features (:data:`FEATURES`) and one-hot codes of the inner and outer layer
  ids, through one hidden dense layer with ReLU and a dense output with a sigmoid.

Why a per-hit encoder rather than a convolution over the two pads stacked as two channels:
the two pads live in different module frames (local x, y of two sensors, barrel or disk), so
their pixels are not aligned and a joint kernel has nothing to align; and a hit belongs to
~3.5 doublets on average at pileup 50, so encoding each hit once costs 7x fewer convolutions
than encoding both pads of every doublet.  The head sees both embeddings and the geometry of
the doublet (``dz/dr`` and the hits' cluster lengths), which is where the compatibility of
the two clusters with one straight-ish track is decided.

Weights file
------------
A model is two files with one stem: ``NAME.json`` (format, architecture as a layer list with
the shape of every array, feature names with their normalisation, pad size and scale, working
point, training provenance) and ``NAME.npz`` (float32 arrays named ``<layer>.weight`` and
``<layer>.bias``; convolution weights ``(out, in, k, k)``, dense weights ``(out, in)``, as
PyTorch stores them).  :func:`load_model` checks everything against the JSON and raises
:class:`ModelError` naming the file, the array and the expected and found shapes.

Precision: weights, inputs and every activation are float32 on all backends; the backends sum
in different orders, so scores differ by a few 1e-6: at most 2.8e-6 cpu vs reference (AMD
EPYC) and 2.1e-6 cuda vs cpu (NVIDIA H200, 67,819 doublets, 2026-11-28);
:data:`SCORE_TOLERANCE` = 3e-5 is 10x that.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.config import BUILTIN_PREFIX, ConfigError, shipped_dir, spec_path
from hltemu.geometry import N_PIXEL_LAYERS, default_geometry, is_barrel_layer
from hltemu.io import PIXEL_PAD_SHAPE
from hltemu.kernels.doublet_cnn_limits import MAX_ACTIVATIONS, MAX_PATCH
from hltemu.npz import read_arrays

#: ``format`` entry of the JSON description.
FORMAT = "hltemu-doublet-cnn"
#: Version of the JSON description this code reads and writes.
FORMAT_VERSION = 1
#: Scores of different backends agree within this (absolute); decisions may differ only for
#: doublets whose score is this close to the working point.
SCORE_TOLERANCE = 3.0e-5
# MAX_ACTIVATIONS (largest activation map, channels x height x width, of an encoder convolution)
# and MAX_PATCH (largest input patch, input channels x kernel area) are the CUDA encoder's
# per-thread scratch limits, defined once in hltemu.kernels.doublet_cnn_limits (imported above).


class ModelError(ConfigError):
    """A doublet-CNN weights file that cannot be used (missing, corrupt, inconsistent)."""


# -- input features ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def length_per_cot() -> float:
    """Sensor thickness / pixel pitch along local y of the detector
    (:func:`hltemu.geometry.default_geometry`; 0.0285 / 0.0150 cm by default): a track at
    ``|dz/dr| = 1`` leaves a 1.9-pixel cluster along z in a barrel module."""
    pixel = default_geometry().pixel
    return pixel.thickness / pixel.pitch_y


def _length_ratio(layer: Any, dr: Any, adz: Any, xp: Any) -> Any:
    """Predicted cluster length along local y, in pixels, of a hit on pixel layer(s) ``layer``:
    ``thickness/pitch * along/across`` (barrel: ``|dz|/dr``; disk: ``dr/|dz|``), capped at 20
    pixels."""
    barrel = is_barrel_layer(layer)
    along = xp.where(barrel, adz, dr)
    across = xp.maximum(xp.where(barrel, dr, adz), np.float32(1e-4))
    return xp.minimum(np.float32(length_per_cot()) * (along / across), np.float32(20.0))


def _f(column: str) -> Callable[[Mapping[str, Any], Any], Any]:
    return lambda d, xp: d[column]


#: Doublet features the head can take: name -> (unit, meaning, function(doublets, xp)).
#: Every function uses only float32 +, -, *, /, abs, min, max and where, so NumPy and CuPy give
#: bit-identical values.
FEATURES: dict[str, tuple[str, str, Callable[[Mapping[str, Any], Any], Any]]] = {
    "r_inner": ("cm", "radius of the inner hit", _f("r_inner")),
    "z_inner": ("cm", "z of the inner hit", _f("z_inner")),
    "r_outer": ("cm", "radius of the outer hit", _f("r_outer")),
    "z_outer": ("cm", "z of the outer hit", _f("z_outer")),
    "dr": ("cm", "r_outer - r_inner", _f("dr")),
    "dz": ("cm", "z_outer - z_inner", _f("dz")),
    "dphi": ("rad", "phi_outer - phi_inner", _f("dphi")),
    "z0": ("cm", "z of the r-z line at r = 0", _f("z0")),
    "curvature": ("1/cm", "signed curvature of the circle through the beam line and both hits",
                  _f("curvature")),
    "inner_size_x": ("pixels", "inner cluster size along local x", _f("inner_size_x")),
    "inner_size_y": ("pixels", "inner cluster size along local y", _f("inner_size_y")),
    "outer_size_x": ("pixels", "outer cluster size along local x", _f("outer_size_x")),
    "outer_size_y": ("pixels", "outer cluster size along local y", _f("outer_size_y")),
    "inner_length": ("pixels", "cluster length along local y the doublet's r-z angle predicts "
                     "for the inner hit", lambda d, xp: _length_ratio(
                         d["inner_layer"], d["dr"], xp.abs(d["dz"]), xp)),
    "outer_length": ("pixels", "the same for the outer hit", lambda d, xp: _length_ratio(
        d["outer_layer"], d["dr"], xp.abs(d["dz"]), xp)),
}
DEFAULT_FEATURES: tuple[str, ...] = tuple(FEATURES)
#: ``doublets`` columns the features and the head read.
DOUBLET_INPUTS: tuple[str, ...] = (
    "inner", "outer", "inner_layer", "outer_layer", "r_inner", "z_inner", "r_outer", "z_outer",
    "dr", "dz", "dphi", "z0", "curvature", "inner_size_x", "inner_size_y", "outer_size_x",
    "outer_size_y",
)


def raw_features(doublets: Mapping[str, Any], names: tuple[str, ...], xp: Any = np) -> Any:
    """Feature matrix, float32 ``(n_doublets, len(names))``, before normalisation."""
    cols = {k: xp.asarray(doublets[k]).astype(xp.float32) if k not in ("inner_layer",
            "outer_layer") else doublets[k] for k in DOUBLET_INPUTS if k in doublets}
    out = [xp.asarray(FEATURES[n][2](cols, xp), dtype=xp.float32) for n in names]
    n = int(out[0].shape[0]) if out else 0
    return xp.stack(out, axis=1) if out else xp.zeros((n, 0), dtype=xp.float32)


# -- the model -----------------------------------------------------------------------------------
#: Layers of the network in order: name, type, and what the layer reads.
LAYERS: tuple[tuple[str, str], ...] = (
    ("conv1", "conv2d"), ("conv2", "conv2d"), ("embed", "dense"), ("hidden", "dense"),
    ("output", "dense"),
)


@dataclass(frozen=True)
class DoubletCnn:
    """A loaded doublet CNN: float32 weights plus the description they came with.

    ``arrays`` maps ``"<layer>.weight"``/``"<layer>.bias"`` to float32 arrays: ``conv1``
    ``(C1, 1, K1, K1)``, ``conv2`` ``(C2, C1, K2, K2)``, ``embed`` ``(E, C2*H2*W2)``,
    ``hidden`` ``(H, 2E + F + 2 n_layers)``, ``output`` ``(1, H)``.  ``feature_mean`` and
    ``feature_std`` (float32 ``(F,)``) normalise the features; pads are divided by
    ``pad_scale`` [electrons].  ``working_point`` is the score threshold the model was
    calibrated with (keeps ``working_point_efficiency`` of true doublets in validation).
    """

    arrays: dict[str, np.ndarray]
    features: tuple[str, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    pad_shape: tuple[int, int] = PIXEL_PAD_SHAPE
    pad_scale: float = 1.0e4
    n_layers: int = N_PIXEL_LAYERS
    working_point: float = 0.5
    working_point_efficiency: float = 0.99
    training: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    # shapes ----------------------------------------------------------------------------------
    @property
    def conv1_out(self) -> tuple[int, int, int]:
        c, _, k, _ = self.arrays["conv1.weight"].shape
        return c, self.pad_shape[0] - k + 1, self.pad_shape[1] - k + 1

    @property
    def conv2_out(self) -> tuple[int, int, int]:
        c, _, k, _ = self.arrays["conv2.weight"].shape
        _, h, w = self.conv1_out
        return c, h - k + 1, w - k + 1

    @property
    def n_embed(self) -> int:
        return int(self.arrays["embed.weight"].shape[0])

    @property
    def n_hidden(self) -> int:
        return int(self.arrays["hidden.weight"].shape[0])

    @property
    def n_parameters(self) -> int:
        return int(sum(a.size for a in self.arrays.values()))

    def describe(self) -> dict[str, Any]:
        """The JSON description (architecture, normalisation, working point, provenance)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "pad_shape": list(self.pad_shape),
            "pad_scale": self.pad_scale,
            "n_layers": self.n_layers,
            "features": list(self.features),
            "feature_units": [FEATURES[n][0] for n in self.features],
            "feature_mean": [float(v) for v in self.feature_mean],
            "feature_std": [float(v) for v in self.feature_std],
            "layers": _layer_list(self),
            "head_input": ["embed(inner hit)", "embed(outer hit)", "normalised features",
                           f"one-hot inner_layer ({self.n_layers})",
                           f"one-hot outer_layer ({self.n_layers})"],
            "working_point": self.working_point,
            "working_point_efficiency": self.working_point_efficiency,
            "training": self.training,
        }


def _layer_list(m: DoubletCnn) -> list[dict[str, Any]]:
    a = m.arrays
    c1, h1, w1 = m.conv1_out
    c2, h2, w2 = m.conv2_out
    return [
        {"name": "conv1", "type": "conv2d", "input": "pad / pad_scale (1 channel)",
         "in_channels": 1, "out_channels": c1, "kernel": a["conv1.weight"].shape[2],
         "padding": "valid", "output": [c1, h1, w1], "activation": "relu",
         "arrays": {k: list(a[f"conv1.{k}"].shape) for k in ("weight", "bias")}},
        {"name": "conv2", "type": "conv2d", "input": "conv1", "in_channels": c1,
         "out_channels": c2, "kernel": a["conv2.weight"].shape[2], "padding": "valid",
         "output": [c2, h2, w2], "activation": "relu",
         "arrays": {k: list(a[f"conv2.{k}"].shape) for k in ("weight", "bias")}},
        {"name": "embed", "type": "dense", "input": "conv2 flattened (channel, row, column)",
         "in": c2 * h2 * w2, "out": m.n_embed, "activation": "relu",
         "arrays": {k: list(a[f"embed.{k}"].shape) for k in ("weight", "bias")}},
        {"name": "hidden", "type": "dense", "input": "head_input",
         "in": a["hidden.weight"].shape[1], "out": m.n_hidden, "activation": "relu",
         "arrays": {k: list(a[f"hidden.{k}"].shape) for k in ("weight", "bias")}},
        {"name": "output", "type": "dense", "input": "hidden", "in": m.n_hidden, "out": 1,
         "activation": "sigmoid",
         "arrays": {k: list(a[f"output.{k}"].shape) for k in ("weight", "bias")}},
    ]


def expected_shapes(conv1: int, conv2: int, kernel1: int, kernel2: int, embed: int,
                    hidden: int, n_features: int, pad_shape: tuple[int, int] = PIXEL_PAD_SHAPE,
                    n_layers: int = N_PIXEL_LAYERS) -> dict[str, tuple[int, ...]]:
    """Shape of every array of a network with these sizes."""
    h2 = pad_shape[0] - kernel1 + 1 - kernel2 + 1
    w2 = pad_shape[1] - kernel1 + 1 - kernel2 + 1
    return {
        "conv1.weight": (conv1, 1, kernel1, kernel1), "conv1.bias": (conv1,),
        "conv2.weight": (conv2, conv1, kernel2, kernel2), "conv2.bias": (conv2,),
        "embed.weight": (embed, conv2 * h2 * w2), "embed.bias": (embed,),
        "hidden.weight": (hidden, 2 * embed + n_features + 2 * n_layers), "hidden.bias": (hidden,),
        "output.weight": (1, hidden), "output.bias": (1,),
    }


def random_model(seed: int = 0, conv1: int = 4, conv2: int = 8, kernel1: int = 3,
                 kernel2: int = 3, embed: int = 16, hidden: int = 32,
                 features: tuple[str, ...] = DEFAULT_FEATURES, working_point: float = 0.5
                 ) -> DoubletCnn:
    """A model with random weights (He-style scale) and unit normalisation, for tests."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in expected_shapes(conv1, conv2, kernel1, kernel2, embed, hidden,
                                       len(features)).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = math.sqrt(2.0 / fan_in) if name.endswith("weight") else 0.1
        arrays[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    m = DoubletCnn(arrays, tuple(features), np.zeros(len(features), np.float32),
                   np.ones(len(features), np.float32), working_point=working_point)
    validate(m)
    return m


def validate(m: DoubletCnn, where: str = "") -> None:
    """Check a model's structure; :class:`ModelError` naming ``where``, the array and shapes."""
    where = where or m.source
    unknown = [n for n in m.features if n not in FEATURES]
    if unknown:
        raise ModelError(f"{where}: unknown feature(s) {unknown}; known: {', '.join(FEATURES)}")
    if tuple(m.pad_shape) != tuple(PIXEL_PAD_SHAPE):
        raise ModelError(f"{where}: pad_shape {list(m.pad_shape)} does not match the pads "
                         f"hltemu stores ({list(PIXEL_PAD_SHAPE)})")
    if not (m.pad_scale > 0 and math.isfinite(m.pad_scale)):
        raise ModelError(f"{where}: pad_scale must be a positive number, got {m.pad_scale}")
    nf = len(m.features)
    for name, arr in (("feature_mean", m.feature_mean), ("feature_std", m.feature_std)):
        if arr.shape != (nf,):
            raise ModelError(f"{where}: {name} has {arr.shape[0] if arr.ndim else 0} entries, "
                             f"expected {nf} (one per feature)")
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"{where}: {name} has non-finite values")
    if not np.all(m.feature_std > 0):
        raise ModelError(f"{where}: feature_std must be > 0 for every feature")
    names = [f"{layer}.{k}" for layer, _ in LAYERS for k in ("weight", "bias")]
    missing = [n for n in names if n not in m.arrays]
    if missing:
        raise ModelError(f"{where}: missing array(s) {missing}; a doublet CNN has {names}")
    extra = sorted(set(m.arrays) - set(names))
    if extra:
        raise ModelError(f"{where}: unexpected array(s) {extra}; a doublet CNN has {names}")
    w1, w2 = m.arrays["conv1.weight"], m.arrays["conv2.weight"]
    if w1.ndim != 4 or w2.ndim != 4 or w1.shape[2] != w1.shape[3] or w2.shape[2] != w2.shape[3]:
        raise ModelError(f"{where}: conv weights must be (out, in, k, k); got conv1 "
                         f"{w1.shape}, conv2 {w2.shape}")
    k1, k2 = int(w1.shape[2]), int(w2.shape[2])
    if k1 + k2 - 1 > min(m.pad_shape):
        raise ModelError(f"{where}: kernels {k1} and {k2} do not fit a {m.pad_shape} pad")
    e_w, h_w = m.arrays["embed.weight"], m.arrays["hidden.weight"]
    want = expected_shapes(int(w1.shape[0]), int(w2.shape[0]), k1, k2,
                           int(e_w.shape[0]) if e_w.ndim == 2 else -1,
                           int(h_w.shape[0]) if h_w.ndim == 2 else -1, nf, tuple(m.pad_shape),
                           m.n_layers)
    for name, shape in want.items():
        got = tuple(m.arrays[name].shape)
        if got != shape:
            raise ModelError(f"{where}: array {name!r} has shape {got}, expected {shape}")
        if m.arrays[name].dtype != np.float32:
            raise ModelError(f"{where}: array {name!r} is {m.arrays[name].dtype}, expected "
                             "float32")
        if not np.all(np.isfinite(m.arrays[name])):
            raise ModelError(f"{where}: array {name!r} has non-finite values")
    for label, (c, h, w) in (("conv1", m.conv1_out), ("conv2", m.conv2_out)):
        if c * h * w > MAX_ACTIVATIONS:
            raise ModelError(f"{where}: {label} output {c} x {h} x {w} exceeds the "
                             f"{MAX_ACTIVATIONS} activations the kernels support")
    patch = max(k1 * k1, int(w1.shape[0]) * k2 * k2)
    if patch > MAX_PATCH:
        raise ModelError(f"{where}: conv2 reads {patch} inputs per position (in channels x "
                         f"kernel area), more than the {MAX_PATCH} the kernels support")
    if not 0.0 <= m.working_point <= 1.0:
        raise ModelError(f"{where}: working_point {m.working_point} is not in [0, 1]")


# -- files ---------------------------------------------------------------------------------------
def models_dir() -> Path:
    """The folder of shipped models (``hltemu/models``)."""
    return shipped_dir("models")


def model_paths(spec: str | Path) -> tuple[Path, Path]:
    """``(json, npz)`` of a model given as ``builtin:NAME``, a stem, or either file."""
    path = spec_path(spec)
    if path.suffix in (".json", ".npz"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".npz")


def save_model(m: DoubletCnn, stem: str | Path) -> tuple[Path, Path]:
    """Write ``stem.json`` and ``stem.npz``; returns their paths."""
    validate(m)
    json_path, npz_path = model_paths(stem)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(m.describe(), indent=1) + "\n")
    with open(npz_path, "wb") as fh:
        np.savez_compressed(fh, **{k: np.ascontiguousarray(v, np.float32)
                                   for k, v in m.arrays.items()})
    return json_path, npz_path


def _json_shapes(desc: Mapping[str, Any], where: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes the JSON's layer list declares."""
    layers = desc.get("layers")
    if not isinstance(layers, list):
        raise ModelError(f"{where}: 'layers' must be a list of layers")
    names = [layer.get("name") if isinstance(layer, Mapping) else None for layer in layers]
    if names != [n for n, _ in LAYERS]:
        raise ModelError(f"{where}: layers {names} do not match the doublet CNN's "
                         f"{[n for n, _ in LAYERS]}")
    shapes = {}
    for layer, (name, kind) in zip(layers, LAYERS, strict=True):
        if layer.get("type") != kind:
            raise ModelError(f"{where}: layer {name!r} has type {layer.get('type')!r}, "
                             f"expected {kind!r}")
        arrays = layer.get("arrays")
        if not isinstance(arrays, Mapping) or set(arrays) != {"weight", "bias"}:
            raise ModelError(f"{where}: layer {name!r} must list the shapes of 'weight' and "
                             "'bias' under 'arrays'")
        for k, shape in arrays.items():
            shapes[f"{name}.{k}"] = tuple(int(v) for v in shape)
    return shapes


def load_model(spec: str | Path) -> DoubletCnn:
    """Read a model (``builtin:NAME``, ``PATH``, ``PATH.json`` or ``PATH.npz``), fully checked.

    Raises :class:`ModelError` for a missing or corrupt file, a JSON that is not a doublet-CNN
    description, or an array whose shape differs from the JSON's (naming the file, the array,
    the expected and the found shape).
    """
    json_path, npz_path = model_paths(spec)
    for p in (json_path, npz_path):
        if not p.is_file():
            hint = ""
            if str(spec).startswith(BUILTIN_PREFIX):
                shipped = sorted(q.stem for q in models_dir().glob("*.npz"))
                hint = f"; shipped models: {', '.join('builtin:' + s for s in shipped) or 'none'}"
            raise ModelError(f"doublet CNN file {p} does not exist (a model is NAME.json + "
                             f"NAME.npz){hint}")
    try:
        desc = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{json_path}: not valid JSON ({exc})") from None
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise ModelError(f"{json_path}: not a doublet-CNN description (expected \"format\": "
                         f"\"{FORMAT}\")")
    if desc.get("version") != FORMAT_VERSION:
        raise ModelError(f"{json_path}: version {desc.get('version')!r}; this hltemu reads "
                         f"version {FORMAT_VERSION}")
    arrays = read_arrays(npz_path, ModelError)
    declared = _json_shapes(desc, json_path)
    for name, shape in declared.items():
        if name not in arrays:
            raise ModelError(f"{npz_path}: array {name!r} (declared in {json_path.name}) is "
                             f"missing; the file has {sorted(arrays)}")
        if tuple(arrays[name].shape) != shape:
            raise ModelError(f"{npz_path}: array {name!r} has shape {tuple(arrays[name].shape)}"
                             f", {json_path.name} declares {shape}")
    try:
        m = DoubletCnn(
            arrays={k: v for k, v in arrays.items()},
            features=tuple(desc["features"]),
            feature_mean=np.asarray(desc["feature_mean"], dtype=np.float32),
            feature_std=np.asarray(desc["feature_std"], dtype=np.float32),
            pad_shape=tuple(int(v) for v in desc["pad_shape"]),
            pad_scale=float(desc["pad_scale"]),
            n_layers=int(desc["n_layers"]),
            working_point=float(desc["working_point"]),
            working_point_efficiency=float(desc.get("working_point_efficiency", float("nan"))),
            training=dict(desc.get("training", {})),
            source=str(npz_path),
        )
    except KeyError as exc:
        raise ModelError(f"{json_path}: missing entry {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{json_path}: bad entry ({exc})") from None
    validate(m, f"{npz_path} / {json_path.name}")
    return m


# -- the NumPy forward pass (reference) ----------------------------------------------------------
def conv2d_valid(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """'Valid' 2-D cross-correlation (PyTorch's Conv2d), float32.

    ``x``: ``(n, in, h, w)``; ``weight``: ``(out, in, k, k)``; returns ``(n, out, h-k+1, w-k+1)``
    with ``out[n, o, i, j] = bias[o] + sum_{c,u,v} weight[o, c, u, v] * x[n, c, i+u, j+v]``.
    """
    n, _, h, w = x.shape
    co, _, k, _ = weight.shape
    oh, ow = h - k + 1, w - k + 1
    out = np.empty((n, co, oh, ow), dtype=np.float32)
    out[...] = bias[None, :, None, None]
    for u in range(k):
        for v in range(k):
            patch = x[:, :, u:u + oh, v:v + ow]  # (n, in, oh, ow)
            out += np.einsum("ncij,oc->noij", patch, weight[:, :, u, v])
    return out


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0.0))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow: ``1/(1+exp(-z))`` for z >= 0, ``e^z/(1+e^z)`` else."""
    z = np.asarray(z, dtype=np.float32)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, np.float32(1.0) / (np.float32(1.0) + e), e / (np.float32(1.0) + e)
                    ).astype(np.float32)


def encode_reference(m: DoubletCnn, pads: np.ndarray) -> np.ndarray:
    """Hit embeddings, float32 ``(n_hits, E)``, from raw pads ``(n_hits, *pad_shape)`` [e]."""
    a = m.arrays
    x = (np.asarray(pads, dtype=np.float32) * np.float32(1.0 / m.pad_scale))[:, None]
    x = relu(conv2d_valid(x, a["conv1.weight"], a["conv1.bias"]))
    x = relu(conv2d_valid(x, a["conv2.weight"], a["conv2.bias"]))
    x = x.reshape(x.shape[0], -1)
    return relu(x @ a["embed.weight"].T + a["embed.bias"])


def normalise(m: DoubletCnn, raw: Any, xp: Any = np, mean: Any = None, std: Any = None) -> Any:
    """``(raw - mean) / std`` per feature, float32 (same operations on every backend);
    ``mean``/``std``: the model's, already on ``raw``'s device (else uploaded here)."""
    mean = xp.asarray(m.feature_mean, dtype=xp.float32) if mean is None else mean
    std = xp.asarray(m.feature_std, dtype=xp.float32) if std is None else std
    return ((raw - mean) / std).astype(xp.float32)


def head_reference(m: DoubletCnn, emb_inner: np.ndarray, emb_outer: np.ndarray,
                   features: np.ndarray, inner_layer: np.ndarray, outer_layer: np.ndarray
                   ) -> np.ndarray:
    """Scores in [0, 1], float32 ``(n_doublets,)``, from the hits' embeddings ``(n, E)``, the
    normalised features ``(n, F)`` and the layer ids ``(n,)``."""
    a = m.arrays
    onehot = np.eye(m.n_layers, dtype=np.float32)
    x = np.concatenate([emb_inner, emb_outer, features, onehot[inner_layer],
                        onehot[outer_layer]], axis=1)
    h = relu(x @ a["hidden.weight"].T + a["hidden.bias"])
    logit = h @ a["output.weight"][0] + a["output.bias"][0]
    return sigmoid(logit)


def score_reference(m: DoubletCnn, pads: np.ndarray, inner_row: np.ndarray,
                    outer_row: np.ndarray, features: np.ndarray, inner_layer: np.ndarray,
                    outer_layer: np.ndarray) -> np.ndarray:
    """Scores of doublets whose hits are rows ``inner_row``/``outer_row`` of ``pads``
    (normalised ``features``); float32 ``(n_doublets,)``."""
    emb = encode_reference(m, pads)
    return head_reference(m, emb[inner_row], emb[outer_row], features, inner_layer, outer_layer)


# -- figures of merit ----------------------------------------------------------------------------
def roc_curve(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fake_efficiency, true_efficiency, thresholds)``: fractions of fake and true doublets
    with ``score >= threshold``, for every distinct score (descending), starting at (0, 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.shape[0] - 1]  # last row of each distinct score
    tp, fp = np.cumsum(t)[last], np.cumsum(~t)[last]
    n_true, n_fake = max(int(t.sum()), 1), max(int((~t).sum()), 1)
    return (np.r_[0.0, fp / n_fake], np.r_[0.0, tp / n_true], np.r_[np.inf, s[last]])


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a true doublet outscores a fake one
    (ties count one half)."""
    fpr, tpr, _ = roc_curve(scores, truth)
    return float(np.trapezoid(tpr, fpr))


def working_point_for(scores: np.ndarray, truth: np.ndarray, efficiency: float) -> float:
    """The highest threshold keeping at least ``efficiency`` of true doublets (score >= it)."""
    true_scores = np.sort(np.asarray(scores, dtype=np.float32)[np.asarray(truth, dtype=bool)])
    if true_scores.size == 0:
        raise ValueError("no true doublets to set a working point with")
    k = int(math.floor((1.0 - efficiency) * true_scores.size + 1e-9))
    return float(true_scores[min(k, true_scores.size - 1)])
