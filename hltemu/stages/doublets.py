"""Stage ``doublets``: pixel doublets on pairs of Phase-1 pixel layers, Patatrack style.

A doublet is a pair of pixel hits, one on the inner and one on the outer layer of a layer pair
(:class:`DoubletsConfig`), that could come from one track of the luminous
region.  The combinatorics are cut down as CMS Patatrack (``gpuPixelDoublets``) does, with cuts
we chose for this detector (all in the config, with units; the field, pixel pitch and sensor
thickness they use are the detector's, :func:`hltemu.geometry.default_geometry`):

* **layer pairs**: the 19 pairs Patatrack uses: adjacent barrel layers, barrel to the first
  disks, adjacent disks, and jumps over one layer (both z sides);
* **phi window** per pair (a search bound and a cut), derived from the geometry for tracks
  above the pT cut;
* **r-z**: the inner hit in the pair's z window and ``0 < dr <= dr_max`` (Patatrack's
  ``minz/maxz/maxr``), ``|dz/dr| <= sinh(eta_max)``, and the straight r-z line through both hits
  meets the beam line at ``|z0| <= z0_max`` (Patatrack's ``z0cutoff``);
* **minimum pT**: the circle through the beam line and both hits must not curl more than a
  ``pt_min`` track (Patatrack approximates the same with ``dphi``; we test the exact curvature
  ``2 |p_i x p_o| / (r_i r_o |p_o - p_i|)``);
* **cluster size**: the cluster length along local y (z in the barrel, r in the disks) must
  match the length a track at the doublet's angle leaves in the sensor,
  ``thickness * |dz/dr| / pitch`` (barrel) or ``thickness * |dr/dz| / pitch`` (disk), within
  ``[-size_below, +size_above]`` pixels.  Patatrack compares the inner size with this
  prediction for barrel-to-disk pairs and the two sizes with each other for barrel pairs; the
  toy simulation's sizes follow the prediction to within 0-2 pixels, so we test the
  prediction on both hits of every pair (``cluster_cut_inner`` / ``cluster_cut_outer``).

Search structure
----------------
Hits are rounded to a 1 um grid (which makes every cut exact integer arithmetic, see
:mod:`hltemu.kernels.doublets`) and sorted by ``(event, layer, phi bin)`` with CSR
``bin_offsets``: an inner hit scans only the phi bins that overlap its window on the outer
layer, widened by 1 urad (far above any last-bit difference of ``atan2`` between NumPy and
CUDA), so the binning can never lose a pair; which pairs pass is decided by the exact cut
alone.

Backends
--------
``reference`` loops over events, inner hits, pairs, bins and outer hits in plain Python calling
the plain-Python cut; ``cpu`` runs the same loops compiled with Numba, in parallel over events
(count, prefix sum, fill); ``cuda`` runs one thread per (inner hit, layer pair) writing through
an atomic counter into a preallocated buffer; when the counter ends above the buffer's size the
buffer is grown to the count and the kernel rerun, never truncated.  Every backend sorts its
doublets by (event, inner hit, outer hit), so all give the same collection.

Output collection ``doublets`` (per event, sorted by inner then outer hit):

============== ======= ==================================================================
column         unit    meaning
============== ======= ==================================================================
inner, outer   \\-      PixelHit row of the inner/outer hit *within its event*
pair           \\-      layer-pair id (position in ``layer_pairs``)
inner_layer    \\-      pixel layer id of the inner hit (outer_layer likewise)
r_inner        cm      transverse radius of the inner hit (z_inner, r_outer, z_outer alike)
dr, dz         cm      outer minus inner
dphi           rad     phi_outer - phi_inner in (-pi, pi]
z0             cm      z where the r-z line through both hits meets r = 0
curvature      1/cm    signed curvature of the circle through (0, 0) and both hits; its
                       sign is the sign of dphi (a positive particle bends to dphi < 0 in
                       B along +z); pT [GeV] = 0.0029979 * B[T] / abs(curvature)
inner_size_x   pixels  cluster sizes along local x and y of both hits (int32)
sim_index      \\-      truth: the GenPart row both hits come from, -1 if they differ
============== ======= ==================================================================

Positions are those of the 1 um grid the cuts see (the hit resolution is 10-30 um).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, MovedKey, param
from hltemu.geometry import C_LIGHT, N_PIXEL_LAYERS, Geometry, default_geometry, is_barrel_layer
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Stage, register
from hltemu.xpsafe import any_true, bincount, item


@dataclass(frozen=True)
class DoubletsConfig:
    """Stage ``doublets``: Patatrack-style pixel doublets on pairs of Phase-1 pixel layers.

    Layer ids: 0-3 barrel BPix1-4, 4-6 disks +z 1-3, 7-9 disks -z 1-3.  The 19 layer pairs are
    the ones CMS Patatrack builds (13 adjacent pairs, 2 barrel jumps, 4 forward jumps).  The
    per-pair tuples have one entry per pair, in the order of ``layer_pairs``.  Their defaults
    are the envelope of true doublets of prompt tracks with pT >= 0.8 GeV and |z0| <= 12 cm in
    the default geometry (phi window x 1.1 + 3 mrad, z window +- 1 cm, dr_max + 0.5 cm;
    ``tests/test_doublets.py`` checks the envelope).

    The solenoid field of the pT cut and the pixel pitch along local y and sensor thickness of
    the cluster-size cut are the detector's, read from :func:`hltemu.geometry.default_geometry`
    (``DetectorConfig.b_field``, ``pixel_pitch_y``, ``pixel_thickness``), not set here.  The
    former keys ``b_field``, ``pitch_y`` and ``sensor_thickness`` (:data:`MOVED_KEYS`) are still
    accepted in a ``[doublets]`` table with a :class:`MovedKeyWarning` when they hold the
    geometry's value, as every file saved before did; a different value is a
    :class:`ConfigError` (see :func:`check_moved_key`: the file asked for cuts this code can no
    longer make, and silently making others would change its results).
    """

    #: Keys removed from ``[doublets]``: their values are the detector geometry's.
    MOVED_KEYS: ClassVar[Mapping[str, MovedKey]] = MappingProxyType({
        "b_field": MovedKey(
            "the detector geometry (hltemu.geometry.default_geometry().b_field, "
            "DetectorConfig.b_field)", "T", lambda: default_geometry().b_field,
            "the pT cut is set by [doublets] pt_min, which keeps the old curvature cut when "
            "scaled by geometry field / old field"),
        "pitch_y": MovedKey(
            "the detector geometry (hltemu.geometry.default_geometry().pixel.pitch_y, "
            "DetectorConfig.pixel_pitch_y)", "cm", lambda: default_geometry().pixel.pitch_y,
            "the cluster-size cut is set by [doublets] size_below, size_above, "
            "cluster_cut_inner and cluster_cut_outer"),
        "sensor_thickness": MovedKey(
            "the detector geometry (hltemu.geometry.default_geometry().pixel.thickness, "
            "DetectorConfig.pixel_thickness)", "cm",
            lambda: default_geometry().pixel.thickness,
            "the cluster-size cut is set by [doublets] size_below, size_above, "
            "cluster_cut_inner and cluster_cut_outer"),
    })

    layer_pairs: tuple = param(
        ((0, 1), (0, 4), (0, 7), (1, 2), (1, 4), (1, 7), (4, 5), (7, 8), (2, 3), (2, 4),
         (2, 7), (5, 6), (8, 9), (0, 2), (1, 3), (0, 5), (0, 8), (4, 6), (7, 9)),
        "", "(inner, outer) pixel layer ids of each layer pair; the pair id is the position")
    phi_window: tuple = param(
        (0.034, 0.107, 0.107, 0.036, 0.076, 0.076, 0.050, 0.050, 0.044, 0.044,
         0.044, 0.040, 0.040, 0.066, 0.076, 0.106, 0.106, 0.071, 0.071),
        "rad", "largest |phi_outer - phi_inner| per pair (below pi/2)")
    inner_z_min: tuple = param(
        (-20.0, -6.0, -24.0, -22.0, 4.0, -28.0, 28.0, -31.0, -23.0, 14.0,
         -28.0, 38.0, -41.0, -17.0, -20.0, -4.0, -28.0, 28.0, -31.0),
        "cm", "lowest z of the inner hit per pair")
    inner_z_max: tuple = param(
        (20.0, 24.0, 6.0, 22.0, 28.0, -4.0, 31.0, -28.0, 23.0, 28.0,
         -14.0, 41.0, -38.0, 17.0, 20.0, 28.0, 4.0, 31.0, -28.0),
        "cm", "highest z of the inner hit per pair")
    dr_max: tuple = param(
        (4.5, 14.0, 14.0, 5.0, 10.0, 10.0, 7.0, 7.0, 6.0, 6.0,
         6.0, 5.5, 5.5, 8.5, 10.0, 14.0, 14.0, 10.0, 10.0),
        "cm", "largest r_outer - r_inner per pair (r_outer > r_inner always)")
    z0_max: float = param(12.0, "cm",
                          "largest |z| where the doublet's r-z line meets the beam line "
                          "(luminous region: sigma_z = 4 cm)")
    eta_max: float = param(3.2, "", "largest |eta| of the doublet's r-z direction: "
                           "|dz/dr| <= sinh(eta_max)")
    pt_min: float = param(0.8, "GeV", "smallest pT of the circle through the beam line and both "
                          "hits (in the detector geometry's field)")
    cluster_cut_inner: bool = param(True, "", "cut on the inner hit's cluster length along "
                                    "local y against the doublet's r-z angle")
    cluster_cut_outer: bool = param(True, "", "the same cut on the outer hit")
    size_below: float = param(0.5, "pixels", "size_y may be this much below the prediction "
                              "thickness * |dz/dr| / pitch_y (barrel), * |dr/dz| (disks), "
                              "thickness and pitch_y of the detector geometry")
    size_above: float = param(2.5, "pixels", "size_y may be this much above the prediction")
    n_phi_bins: int = param(128, "", "phi bins of the search structure (per event and layer)")
    capacity: int = param(0, "doublets", "first size of the cuda output buffer (0: 1.25 times "
                          "the last batch's doublets per hit, 4 per hit at first, + 1024); "
                          "grown and rerun when too small, never truncated")

    def __post_init__(self) -> None:
        n = len(self.layer_pairs)
        pairs = [tuple(p) for p in self.layer_pairs]
        if n == 0:
            raise ConfigError("[doublets] layer_pairs must list at least one (inner, outer) pair")
        for pair in pairs:
            if (len(pair) != 2 or not all(isinstance(v, int) and 0 <= v <= 9 for v in pair)
                    or pair[0] == pair[1]):
                raise ConfigError(
                    f"[doublets] layer_pairs: {pair!r} is not a pair of two different layer ids "
                    "0-9 (0-3 barrel, 4-6 disks +z, 7-9 disks -z)")
        if len(set(pairs)) != n:
            raise ConfigError(f"[doublets] layer_pairs lists a pair twice: {self.layer_pairs!r}")
        for name in ("phi_window", "inner_z_min", "inner_z_max", "dr_max"):
            value = getattr(self, name)
            if len(value) != n:
                raise ConfigError(f"[doublets] {name} needs {n} entries (one per layer pair), "
                                  f"got {len(value)}")
        for p, w in enumerate(self.phi_window):
            if not 0.0 < w < math.pi / 2:
                raise ConfigError(f"[doublets] phi_window[{p}] = {w} rad is not in (0, pi/2)")
        for p, (lo, hi) in enumerate(zip(self.inner_z_min, self.inner_z_max, strict=True)):
            if lo > hi:
                raise ConfigError(f"[doublets] inner_z_min[{p}] = {lo} cm > inner_z_max[{p}] = "
                                  f"{hi} cm")
        for name in ("z0_max", "eta_max", "pt_min"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[doublets] {name} must be > 0, got {getattr(self, name)}")
        if self.size_below < 0 or self.size_above < 0:
            raise ConfigError("[doublets] size_below and size_above must be >= 0 pixels")
        if not 1 <= self.n_phi_bins <= 4096:
            raise ConfigError(f"[doublets] n_phi_bins must be 1-4096, got {self.n_phi_bins}")
        if self.capacity < 0:
            raise ConfigError(f"[doublets] capacity must be >= 0, got {self.capacity}")


#: Grid the hit coordinates are rounded to before the cuts: 1 um, in cm.
GRID_CM = 1.0e-4
#: Largest |x|, |y|, |z| of a hit: keeps every sum in the cuts an exact integer in float64.
MAX_COORDINATE_CM = 1000.0
#: PixelHit columns the stage reads.
HIT_COLUMNS: tuple[str, ...] = ("x", "y", "z", "layer", "size_x", "size_y")

#: Output columns: name -> (dtype, unit, meaning).
DOUBLET_COLUMNS: dict[str, tuple[str, str, str]] = {
    "inner": ("int32", "", "PixelHit row of the inner hit within its event"),
    "outer": ("int32", "", "PixelHit row of the outer hit within its event"),
    "pair": ("int32", "", "layer-pair id: position in DoubletsConfig.layer_pairs"),
    "inner_layer": ("int32", "", "pixel layer id of the inner hit"),
    "outer_layer": ("int32", "", "pixel layer id of the outer hit"),
    "r_inner": ("float32", "cm", "transverse radius of the inner hit"),
    "z_inner": ("float32", "cm", "z of the inner hit"),
    "r_outer": ("float32", "cm", "transverse radius of the outer hit"),
    "z_outer": ("float32", "cm", "z of the outer hit"),
    "dr": ("float32", "cm", "r_outer - r_inner"),
    "dz": ("float32", "cm", "z_outer - z_inner"),
    "dphi": ("float32", "rad", "phi_outer - phi_inner in (-pi, pi]"),
    "z0": ("float32", "cm", "z of the r-z line through both hits at r = 0"),
    "curvature": ("float32", "1/cm", "signed curvature of the circle through the beam line "
                  "and both hits (sign of dphi)"),
    "inner_size_x": ("int32", "pixels", "inner cluster size along local x"),
    "inner_size_y": ("int32", "pixels", "inner cluster size along local y"),
    "outer_size_x": ("int32", "pixels", "outer cluster size along local x"),
    "outer_size_y": ("int32", "pixels", "outer cluster size along local y"),
    "sim_index": ("int32", "", "truth: GenPart row of both hits, -1 when they differ or noise"),
}


# -- the cut tables ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PairTable:
    """The layer pairs and cuts of a config as the kernels take them (NumPy arrays).

    ``inner``/``outer`` (int32, per pair), ``window`` (float64: the phi window plus
    :data:`~hltemu.kernels.doublets.PHI_MARGIN`, rad, for choosing bins), ``cuts`` (float64
    ``(n_pairs, N_PAIR_COLUMNS)``), ``global_cuts``
    (float64 ``(N_CUT_COLUMNS,)``), and pairs grouped by inner layer: ``by_layer`` (int32 pair
    ids) with CSR ``layer_offsets`` (``N_PIXEL_LAYERS + 1``).
    """

    inner: np.ndarray
    outer: np.ndarray
    window: np.ndarray
    cuts: np.ndarray
    global_cuts: np.ndarray
    by_layer: np.ndarray
    layer_offsets: np.ndarray
    n_bins: int

    @property
    def n_pairs(self) -> int:
        return int(self.inner.shape[0])


def pair_table(cfg: DoubletsConfig, geometry: Geometry | None = None) -> PairTable:
    """Cut tables in the kernels' units (um, tan**2, um**-2) from ``cfg`` and the detector
    ``geometry`` (default: :func:`~hltemu.geometry.default_geometry`), which gives the solenoid
    field of the pT cut, the pixel pitch along local y and the sensor thickness of the
    cluster-size cut, and which layers are barrel layers."""
    from hltemu.kernels import doublets as K

    geometry = default_geometry() if geometry is None else geometry
    um = 1.0 / GRID_CM
    pairs = np.array([tuple(p) for p in cfg.layer_pairs], dtype=np.int32).reshape(-1, 2)
    inner, outer = pairs[:, 0].copy(), pairs[:, 1].copy()
    n = inner.shape[0]
    window = np.asarray(cfg.phi_window, dtype=np.float64) + K.PHI_MARGIN
    cuts = np.zeros((n, K.N_PAIR_COLUMNS), dtype=np.float64)
    cuts[:, K.PAIR_TAN2_DPHI] = np.tan(np.asarray(cfg.phi_window, dtype=np.float64)) ** 2
    cuts[:, K.PAIR_INNER_Z_MIN] = np.asarray(cfg.inner_z_min, dtype=np.float64) * um
    cuts[:, K.PAIR_INNER_Z_MAX] = np.asarray(cfg.inner_z_max, dtype=np.float64) * um
    cuts[:, K.PAIR_DR_MAX] = np.asarray(cfg.dr_max, dtype=np.float64) * um
    cuts[:, K.PAIR_INNER_BARREL] = is_barrel_layer(inner)
    cuts[:, K.PAIR_OUTER_BARREL] = is_barrel_layer(outer)
    g = np.zeros(K.N_CUT_COLUMNS, dtype=np.float64)
    g[K.CUT_Z0_MAX] = cfg.z0_max * um
    r_min_um = 100.0 * cfg.pt_min / (C_LIGHT * geometry.b_field) * um  # helix radius of pt_min
    g[K.CUT_KAPPA2_MAX] = 1.0 / (r_min_um * r_min_um)
    g[K.CUT_COT_MAX] = math.sinh(cfg.eta_max)
    g[K.CUT_PITCH] = round(geometry.pixel.pitch_y * um)
    g[K.CUT_THICKNESS] = round(geometry.pixel.thickness * um)
    g[K.CUT_SIZE_BELOW] = cfg.size_below
    g[K.CUT_SIZE_ABOVE] = cfg.size_above
    g[K.CUT_SIZE_INNER] = float(cfg.cluster_cut_inner)
    g[K.CUT_SIZE_OUTER] = float(cfg.cluster_cut_outer)
    by_layer = np.argsort(inner, kind="stable").astype(np.int32)
    layer_offsets = np.searchsorted(inner[by_layer], np.arange(N_PIXEL_LAYERS + 1)).astype(np.int64)
    return PairTable(inner, outer, window, cuts, g, by_layer, layer_offsets, int(cfg.n_phi_bins))


# -- the search structure ---------------------------------------------------------------------
@dataclass
class HitTable:
    """Pixel hits on the 1 um grid, sorted by ``(event, layer, phi bin)`` (arrays on one backend).

    ``x, y, z`` (float64, integer um), ``r`` (float64, ``sqrt(x**2 + y**2)`` rounded to um),
    ``phi`` (float64, rad, ``atan2(y, x)``), ``size_y`` (float64, pixels), ``layer``,
    ``phi_bin``, ``event`` (int32), ``row`` (int64: the
    hit's row in the PixelHit collection), ``bin_offsets`` (int64, CSR over
    ``(event * N_PIXEL_LAYERS + layer) * n_bins + phi_bin``).
    """

    x: Any
    y: Any
    z: Any
    r: Any
    phi: Any
    size_y: Any
    layer: Any
    phi_bin: Any
    event: Any
    row: Any
    bin_offsets: Any
    n_events: int
    n_bins: int

    @property
    def n_hits(self) -> int:
        return int(self.x.shape[0])


def check_hits(hits: Collection, backend: Backend) -> None:
    """Raise :class:`PipelineError` for a PixelHit collection the stage cannot use."""
    missing = [c for c in HIT_COLUMNS if c not in hits]
    if missing:
        raise PipelineError(
            f"stage 'doublets' needs PixelHit column(s) {missing}; the collection has "
            f"{sorted(hits.columns)}"
        )
    if hits.size == 0:
        return
    xp = backend.xp
    layer = hits["layer"]
    bad = (layer < 0) | (layer >= N_PIXEL_LAYERS)
    if any_true(bad):
        value = int(backend.to_host(layer[xp.argmax(bad)]))
        raise PipelineError(
            f"PixelHit.layer has the value {value}; valid layer ids are 0-{N_PIXEL_LAYERS - 1} "
            "(0-3 barrel, 4-6 disks +z, 7-9 disks -z)"
        )
    for name in ("x", "y", "z"):
        col = hits[name]
        bad = ~(xp.abs(col) <= MAX_COORDINATE_CM)  # also catches NaN
        if any_true(bad):
            value = float(backend.to_host(col[xp.argmax(bad)]))
            raise PipelineError(
                f"PixelHit.{name} has the value {value} cm; hit coordinates must be finite and "
                f"within +-{MAX_COORDINATE_CM:g} cm"
            )


def build_hit_table(hits: Collection, n_bins: int, backend: Backend) -> HitTable:
    """The search structure of ``hits`` on ``backend`` (same arithmetic on every backend).

    Each step is one correctly rounded IEEE operation (multiply, rint, sqrt), so NumPy and CuPy
    give the same grid; ``atan2`` (phi bins) may differ in the last bit, which the one-bin
    margin of the search window absorbs.
    """
    check_hits(hits, backend)
    xp = backend.xp
    um = 1.0 / GRID_CM
    x = xp.rint(xp.asarray(hits["x"], dtype=xp.float64) * um)
    y = xp.rint(xp.asarray(hits["y"], dtype=xp.float64) * um)
    z = xp.rint(xp.asarray(hits["z"], dtype=xp.float64) * um)
    r = xp.rint(xp.sqrt(x * x + y * y))
    phi = xp.arctan2(y, x)
    phi_bin = xp.clip(xp.floor((phi + math.pi) * (n_bins / (2.0 * math.pi))), 0, n_bins - 1)
    phi_bin = phi_bin.astype(xp.int32)
    layer = xp.asarray(hits["layer"], dtype=xp.int32)
    rows = xp.arange(hits.size, dtype=xp.int64)
    event = xp.searchsorted(hits.offsets[1:], rows, side="right").astype(xp.int32)
    key = (event.astype(xp.int64) * N_PIXEL_LAYERS + layer) * n_bins + phi_bin
    order = xp.argsort(key, kind="stable") if xp is np else xp.argsort(key)
    n_cells = hits.n_events * N_PIXEL_LAYERS * n_bins
    bin_offsets = xp.searchsorted(key[order], xp.arange(n_cells + 1, dtype=xp.int64))
    return HitTable(
        x=x[order], y=y[order], z=z[order], r=r[order], phi=phi[order],
        size_y=xp.asarray(hits["size_y"], dtype=xp.float64)[order],
        layer=layer[order], phi_bin=phi_bin[order], event=event[order],
        row=order.astype(xp.int64), bin_offsets=bin_offsets.astype(xp.int64),
        n_events=hits.n_events, n_bins=n_bins,
    )


# -- the three implementations of the search ---------------------------------------------------
def find_reference(table: HitTable, pairs: PairTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Doublets by plain loops: ``(inner, outer, pair)`` as sorted-hit indices and pair ids."""
    from hltemu.kernels.doublets import doublet_passes, phi_bins

    x, y, z, r, s = (a.tolist() for a in (table.x, table.y, table.z, table.r, table.size_y))
    layer, phi = table.layer.tolist(), table.phi.tolist()
    bin_offsets = table.bin_offsets.tolist()
    n_bins = table.n_bins
    per_event = N_PIXEL_LAYERS * n_bins
    found_inner, found_outer, found_pair = [], [], []
    for e in range(table.n_events):
        for i in range(bin_offsets[e * per_event], bin_offsets[(e + 1) * per_event]):
            # every layer pair whose inner layer is this hit's layer
            for k in range(pairs.layer_offsets[layer[i]], pairs.layer_offsets[layer[i] + 1]):
                p = int(pairs.by_layer[k])
                outer_cells = (e * N_PIXEL_LAYERS + int(pairs.outer[p])) * n_bins
                b0, n_scan = phi_bins(phi[i], float(pairs.window[p]), n_bins)
                for w in range(n_scan):
                    cell = outer_cells + (b0 + w) % n_bins
                    for o in range(bin_offsets[cell], bin_offsets[cell + 1]):
                        if doublet_passes(x[i], y[i], z[i], r[i], s[i], x[o], y[o], z[o], r[o],
                                          s[o], pairs.cuts, p, pairs.global_cuts):
                            found_inner.append(i)
                            found_outer.append(o)
                            found_pair.append(p)
    return (np.array(found_inner, dtype=np.int64), np.array(found_outer, dtype=np.int64),
            np.array(found_pair, dtype=np.int32))


def _kernel_args(pairs: PairTable, be: Backend) -> dict[str, Any]:
    return {
        "pair_outer": be.to_device(pairs.outer), "pair_window": be.to_device(pairs.window),
        "pair_cuts": be.to_device(pairs.cuts), "cuts": be.to_device(pairs.global_cuts),
        "layer_offsets": be.to_device(pairs.layer_offsets),
        "by_layer": be.to_device(pairs.by_layer),
    }


def find_cpu(table: HitTable, pairs: PairTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Doublets with the Numba CPU kernels (parallel over events): count, prefix sum, fill."""
    from hltemu.kernels.doublets import count_doublets_cpu, fill_doublets_cpu

    args = (table.x, table.y, table.z, table.r, table.size_y, table.phi, table.layer,
            table.bin_offsets, N_PIXEL_LAYERS, table.n_bins, pairs.layer_offsets,
            pairs.by_layer, pairs.outer, pairs.window, pairs.cuts, pairs.global_cuts)
    counts = np.zeros(table.n_events, dtype=np.int64)
    count_doublets_cpu(*args, counts)
    out_offsets = np.zeros(table.n_events + 1, dtype=np.int64)
    np.cumsum(counts, out=out_offsets[1:])
    n = int(out_offsets[-1])
    inner, outer = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    pair = np.empty(n, dtype=np.int32)
    fill_doublets_cpu(*args, out_offsets, inner, outer, pair)
    return inner.astype(np.int64), outer.astype(np.int64), pair


def work_items(table: HitTable, device_pairs: dict[str, Any], xp: Any) -> tuple[Any, Any]:
    """``(item_hit, item_pair)``: one entry per (sorted inner hit, layer pair of its layer).

    Built with ``searchsorted`` rather than ``repeat`` with array counts, which CuPy lacks.
    ``device_pairs``: the pair tables on the device (:func:`_kernel_args`).
    """
    offsets = device_pairs["layer_offsets"]
    per_hit = (offsets[1:] - offsets[:-1])[table.layer]
    ends = xp.cumsum(per_hit)  # one past the last item of each hit
    n_items = item(ends[-1]) if table.n_hits else 0
    items = xp.arange(n_items, dtype=xp.int64)
    item_hit = xp.searchsorted(ends, items, side="right")
    k = items - (ends - per_hit)[item_hit]  # which of the hit's pairs
    item_pair = device_pairs["by_layer"][offsets[table.layer[item_hit]] + k]
    return item_hit.astype(xp.int32), item_pair.astype(xp.int32)


def find_cuda(table: HitTable, pairs: PairTable, be: Backend, capacity: int = 0,
              device_pairs: dict[str, Any] | None = None) -> tuple[Any, Any, Any, int]:
    """Doublets with the CUDA kernel: ``(inner, outer, pair, launches)``.

    The output buffer starts at ``capacity`` doublets (0: 4 per hit + 1024).  The kernel
    counts every doublet it finds, stored or not; when the count exceeds the buffer, the
    buffer is reallocated to the count and the kernel rerun (``launches`` says how often it
    ran), so no doublet is ever dropped.  ``device_pairs``: the pair tables already on the
    device (:func:`prepare`), else they are uploaded here.
    """
    from hltemu.kernels.doublets import find_doublets_cuda

    xp = be.xp
    dev = device_pairs if device_pairs is not None else _kernel_args(pairs, be)
    item_hit, item_pair = work_items(table, dev, xp)
    n_items = int(item_hit.shape[0])
    capacity = first_capacity(capacity, table.n_hits, None)
    launches = 0
    while True:
        counter = xp.zeros(1, dtype=xp.int64)
        inner = xp.empty(capacity, dtype=xp.int32)
        outer = xp.empty(capacity, dtype=xp.int32)
        pair = xp.empty(capacity, dtype=xp.int32)
        if n_items:
            find_doublets_cuda[blocks(n_items), THREADS_PER_BLOCK](
                item_hit, item_pair, table.x, table.y, table.z, table.r, table.size_y,
                table.phi, table.event, table.bin_offsets, N_PIXEL_LAYERS, table.n_bins,
                dev["pair_outer"], dev["pair_window"], dev["pair_cuts"], dev["cuts"], counter,
                inner, outer, pair)
        launches += 1
        found = be.item(counter[0])
        if found <= capacity:
            break
        capacity = found  # the rerun finds exactly this many: the buffer now fits
    return (inner[:found].astype(xp.int64), outer[:found].astype(xp.int64), pair[:found],
            launches)


# -- from found pairs to the output collection -------------------------------------------------
def doublet_collection(hits: Collection, table: HitTable, pairs: PairTable, inner: Any,
                       outer: Any, pair: Any, be: Backend) -> Collection:
    """The ``doublets`` collection from sorted-hit indices (any order): sorted by (event, inner
    hit, outer hit), with the feature columns of :data:`DOUBLET_COLUMNS`."""
    xp = be.xp
    inner, outer = xp.asarray(inner, dtype=xp.int64), xp.asarray(outer, dtype=xp.int64)
    pair = xp.asarray(pair, dtype=xp.int32)
    row_i, row_o = table.row[inner], table.row[outer]
    order = xp.argsort(row_i * max(table.n_hits, 1) + row_o)  # unique keys: (event, inner, outer)
    inner, outer, pair, row_i, row_o = (a[order] for a in (inner, outer, pair, row_i, row_o))
    event = table.event[inner].astype(xp.int64)
    counts = bincount(event, table.n_events, xp)[: table.n_events]
    first = hits.offsets[event]

    cm = GRID_CM
    xi, yi, zi, ri = table.x[inner], table.y[inner], table.z[inner], table.r[inner]
    xo, yo, zo, ro = table.x[outer], table.y[outer], table.z[outer], table.r[outer]
    dr = ro - ri  # > 0 um for every doublet (cut 1)
    cross = xi * yo - yi * xo
    dot = xi * xo + yi * yo
    chord = xp.sqrt((xo - xi) ** 2 + (yo - yi) ** 2)
    curvature = 2.0 * cross / (xp.sqrt(xi * xi + yi * yi) * xp.sqrt(xo * xo + yo * yo) * chord)
    if "sim_index" in hits:
        si, so = hits["sim_index"][row_i], hits["sim_index"][row_o]
        sim = xp.where((si == so) & (si >= 0), si, -1)
    else:
        sim = xp.full(inner.shape[0], -1, dtype=xp.int32)
    cols = {
        "inner": row_i - first, "outer": row_o - first, "pair": pair,
        "inner_layer": table.layer[inner], "outer_layer": table.layer[outer],
        "r_inner": ri * cm, "z_inner": zi * cm, "r_outer": ro * cm, "z_outer": zo * cm,
        "dr": dr * cm, "dz": (zo - zi) * cm, "dphi": xp.arctan2(cross, dot),
        "z0": (zi * ro - ri * zo) / dr * cm, "curvature": curvature / cm,
        "inner_size_x": hits["size_x"][row_i], "inner_size_y": hits["size_y"][row_i],
        "outer_size_x": hits["size_x"][row_o], "outer_size_y": hits["size_y"][row_o],
        "sim_index": sim,
    }
    cols = {k: xp.asarray(v).astype(DOUBLET_COLUMNS[k][0]) for k, v in cols.items()}
    from hltemu.batch import counts_to_offsets

    return Collection(counts_to_offsets(counts, xp), cols)


class Prepared(NamedTuple):
    """What :func:`prepare` builds once per (config, backend): the cut tables, those the CUDA
    kernel reads on the backend's device, and ``sizing``: what the last cuda batch found
    (``per_hit``: its doublets per hit; ``launches``: how often its kernel ran), from which
    the next batch's buffer is sized (:func:`first_capacity`)."""

    pairs: PairTable
    device_pairs: dict[str, Any]
    sizing: dict[str, float]


def prepare(cfg: DoubletsConfig, backend: Backend) -> Prepared:
    """The cut tables of ``cfg``, uploaded once to ``backend``."""
    pairs = pair_table(cfg)
    return Prepared(pairs, _kernel_args(pairs, backend), {})


#: The cuda buffer of a batch holds this many times the last batch's doublets per hit (its
#: spread between batches of 100 ttbar events is a few percent), so that the kernel runs once.
CAPACITY_MARGIN = 1.25


def first_capacity(capacity: int, n_hits: int, last_per_hit: float | None) -> int:
    """The first size of a batch's cuda doublet buffer: ``capacity`` when the config sets it
    (> 0), else :data:`CAPACITY_MARGIN` times the last batch's doublets per hit (4 per hit for
    the first batch: 11 are found at pileup 200, where that meant a second search), plus 1024."""
    if capacity > 0:
        return capacity
    per_hit = 4.0 if last_per_hit is None else CAPACITY_MARGIN * last_per_hit
    return int(per_hit * n_hits) + 1024


def run_reference(batch: EventBatch, cfg: DoubletsConfig, prep: Prepared
                  ) -> dict[str, Collection]:
    """Every (hit, layer pair, phi bin) scanned in plain Python (:func:`find_reference`)."""
    hits, be = batch["PixelHit"], batch.backend
    table = build_hit_table(hits, cfg.n_phi_bins, be)
    found = find_reference(table, prep.pairs)
    return {"doublets": doublet_collection(hits, table, prep.pairs, *found, be)}


def run_cpu(batch: EventBatch, cfg: DoubletsConfig, prep: Prepared) -> dict[str, Collection]:
    """The Numba kernels, parallel over events (:func:`find_cpu`)."""
    hits, be = batch["PixelHit"], batch.backend
    table = build_hit_table(hits, cfg.n_phi_bins, be)
    found = find_cpu(table, prep.pairs)
    return {"doublets": doublet_collection(hits, table, prep.pairs, *found, be)}


def run_cuda(batch: EventBatch, cfg: DoubletsConfig, prep: Prepared) -> dict[str, Collection]:
    """The CUDA kernel, one thread per (hit, layer pair) (:func:`find_cuda`)."""
    hits, be = batch["PixelHit"], batch.backend
    table = build_hit_table(hits, cfg.n_phi_bins, be)
    capacity = first_capacity(cfg.capacity, table.n_hits, prep.sizing.get("per_hit"))
    inner, outer, pair, launches = find_cuda(table, prep.pairs, be, capacity, prep.device_pairs)
    if table.n_hits:
        prep.sizing["per_hit"] = int(inner.shape[0]) / table.n_hits
    prep.sizing["launches"] = launches
    return {"doublets": doublet_collection(hits, table, prep.pairs, inner, outer, pair, be)}


STAGE = register(Stage(
    name="doublets",
    needs=("PixelHit",),
    adds=("doublets",),
    config_type=DoubletsConfig,
    prepare=prepare,
    counts_only=("doublets",),
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="pixel doublets on 19 Phase-1 layer pairs with Patatrack-style cuts (phi, z0, pT, "
        "cluster size)",
))


def find_doublets(hits: Collection, cfg: DoubletsConfig, be: Backend) -> Collection:
    """The ``doublets`` collection of ``hits`` (a PixelHit collection on ``be``): the stage on
    a batch of just these hits."""
    return STAGE(EventBatch(be, hits.n_events, {"PixelHit": hits}), cfg)["doublets"]
