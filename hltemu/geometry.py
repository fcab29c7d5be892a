"""The detector description: the CMS Phase-1 pixel tracker and an ECAL + HCAL cell grid.

Everything is built from a :class:`~hltemu.config.DetectorConfig`; :func:`default_geometry`
returns the (cached) geometry of the default config, the one ``hltemu generate`` simulates and
the stages read.  Units: cm, rad, GeV, tesla.

Pixel tracker
-------------
Layer ids (the ``PixelHit.layer`` column): 0-3 the barrel layers BPix1-4, 4-6 the forward disks
at +z (FPix+1..3), 7-9 the disks at -z (FPix-1..3).

* A barrel layer is a cylinder of radius ``r`` and half-length ``L``, tiled by ``n_ladders``
  ladders in phi times ``n_modules_z`` modules in z.  Module index
  ``i_ladder * n_modules_z + i_z``, with ``i_ladder = floor((phi + pi) / (2 pi / n_ladders))`` and
  ``i_z = floor((z + L) / (2 L / n_modules_z))``.  Module-local coordinates: ``u = r (phi -
  phi_ladder)`` (arc length along r-phi, 100 um pitch) and ``v = z - z_module`` (150 um pitch),
  both measured from the module centre.  A toy simplification of the real flat, overlapping
  ladders: the sensors lie on the cylinder.
* A disk is a plane ``z = z_disk`` with rings between ``ring_radii[k]`` and
  ``ring_radii[k + 1]``, ring ``k`` holding ``ring_modules[k]`` flat modules in phi.  Module
  index ``sum(ring_modules[:k]) + i_phi``.  A module's centre is at radius
  ``(r_k + r_{k+1}) / 2`` and azimuth ``phi_m``; local ``v`` runs along the radial direction
  through ``phi_m`` (150 um pitch), local ``u`` perpendicular to it (100 um pitch).

Calorimeter
-----------
Projective eta-phi cell grids, one per layer, inner to outer (default: ECAL ``EM1`` 0.025 x
0.0245 and ``EM2`` 0.05 x 0.049, HCAL ``HAD1-3`` 0.1 x 0.098, all at |eta| < 3.0: 88,320
cells).  Cell id ordering (the ``CaloCell.id`` column)::

    id = layer_offset[layer] + i_eta * n_phi[layer] + i_phi

with layers in the order of the config (ECAL layers first, then HCAL), ``i_eta = 0`` at
``eta = -eta_max`` and ``i_phi = 0`` at ``phi = -pi``.  Each cell has a Gaussian electronic
noise sigma (GeV, :attr:`Calorimeter.noise_sigma`) that grows with |eta| and varies from cell
to cell by a fixed pattern (seeded by the layer number, not by the run's seed, so the noise
table is part of the geometry).  Topoclustering thresholds are in units of it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hltemu.config import DetectorConfig

#: c in GeV / (T m): a charge-1 particle of transverse momentum pt (GeV) in a field B (T) curls
#: with radius pt / (C_LIGHT B) metres.
C_LIGHT = 0.299792458

#: Barrel layer ids (BPix1-4): the first ids.
BARREL_LAYERS: tuple[int, ...] = (0, 1, 2, 3)
#: Disk layer ids (+z then -z), following the barrel's.
DISK_LAYERS: tuple[int, ...] = (4, 5, 6, 7, 8, 9)
#: Number of barrel layer ids.
N_BARREL_LAYERS = len(BARREL_LAYERS)
#: Number of pixel layer ids (4 barrel layers + 2 x 3 disks).
N_PIXEL_LAYERS = len(BARREL_LAYERS) + len(DISK_LAYERS)
if BARREL_LAYERS + DISK_LAYERS != tuple(range(N_PIXEL_LAYERS)):  # pragma: no cover
    raise AssertionError("pixel layer ids must be 0.. with the barrel first (is_barrel_layer)")


def is_barrel_layer(layer: Any) -> Any:
    """Whether pixel layer id(s) ``layer`` are barrel layers (:data:`BARREL_LAYERS`).

    Elementwise for a NumPy or CuPy array (a bool array), a bool for an int.  The barrel ids
    come first, so the test is one comparison with :data:`N_BARREL_LAYERS`, the same operation
    on every backend.  The one barrel test of the package: use it rather than a literal.
    """
    return layer < N_BARREL_LAYERS


@dataclass(frozen=True)
class BarrelLayer:
    """One pixel barrel layer: a cylinder tiled by ladders (phi) and modules (z)."""

    layer: int
    radius: float  # cm
    half_length: float  # cm
    n_ladders: int
    n_modules_z: int

    @property
    def ladder_dphi(self) -> float:
        return 2.0 * math.pi / self.n_ladders

    @property
    def module_length(self) -> float:
        """Module length along z (cm)."""
        return 2.0 * self.half_length / self.n_modules_z

    @property
    def n_modules(self) -> int:
        return self.n_ladders * self.n_modules_z

    def global_to_local(self, phi: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """Module index and local ``(u, v)`` (cm) of points on the cylinder at ``(phi, z)``."""
        i_lad = np.clip(np.floor((phi + math.pi) / self.ladder_dphi).astype(np.int64), 0,
                        self.n_ladders - 1)
        i_z = np.clip(np.floor((z + self.half_length) / self.module_length).astype(np.int64), 0,
                      self.n_modules_z - 1)
        phi_c = -math.pi + (i_lad + 0.5) * self.ladder_dphi
        z_c = -self.half_length + (i_z + 0.5) * self.module_length
        dphi = np.remainder(phi - phi_c + math.pi, 2.0 * math.pi) - math.pi
        return i_lad * self.n_modules_z + i_z, self.radius * dphi, z - z_c

    def local_to_global(self, module: np.ndarray, u: np.ndarray, v: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global ``(x, y, z)`` (cm) of module-local ``(u, v)``."""
        module = np.asarray(module)
        i_lad, i_z = module // self.n_modules_z, module % self.n_modules_z
        phi = -math.pi + (i_lad + 0.5) * self.ladder_dphi + u / self.radius
        z = -self.half_length + (i_z + 0.5) * self.module_length + v
        return self.radius * np.cos(phi), self.radius * np.sin(phi), z


@dataclass(frozen=True)
class Disk:
    """One forward pixel disk at ``z``: rings of flat modules."""

    layer: int
    z: float  # cm, signed
    ring_radii: tuple[float, ...]  # cm, ring boundaries
    ring_modules: tuple[int, ...]

    @property
    def r_min(self) -> float:
        return self.ring_radii[0]

    @property
    def r_max(self) -> float:
        return self.ring_radii[-1]

    @property
    def n_modules(self) -> int:
        return int(sum(self.ring_modules))

    def _module_frame(self, module: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre radius and azimuth of each module."""
        starts = np.cumsum((0, *self.ring_modules))
        ring = np.searchsorted(starts, module, side="right") - 1
        n = np.asarray(self.ring_modules)[ring]
        r_c = 0.5 * (np.asarray(self.ring_radii)[ring] + np.asarray(self.ring_radii)[ring + 1])
        phi_c = -math.pi + (module - starts[ring] + 0.5) * (2.0 * math.pi / n)
        return r_c, phi_c

    def global_to_local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        """Module index and local ``(u, v)`` (cm) of points ``(x, y)`` on the disk plane."""
        r = np.hypot(x, y)
        phi = np.arctan2(y, x)
        radii = np.asarray(self.ring_radii)
        ring = np.clip(np.searchsorted(radii, r, side="right") - 1, 0, len(self.ring_modules) - 1)
        n = np.asarray(self.ring_modules)[ring]
        i_phi = np.clip(np.floor((phi + math.pi) * n / (2.0 * math.pi)).astype(np.int64), 0, n - 1)
        module = np.cumsum((0, *self.ring_modules))[ring] + i_phi
        r_c, phi_c = self._module_frame(module)
        c, s = np.cos(phi_c), np.sin(phi_c)
        return module, -x * s + y * c, x * c + y * s - r_c

    def local_to_global(self, module: np.ndarray, u: np.ndarray, v: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global ``(x, y, z)`` (cm) of module-local ``(u, v)``."""
        r_c, phi_c = self._module_frame(np.asarray(module))
        c, s = np.cos(phi_c), np.sin(phi_c)
        x = (r_c + v) * c - u * s
        y = (r_c + v) * s + u * c
        return x, y, np.full_like(x, self.z)


@dataclass(frozen=True)
class PixelDetector:
    """The Phase-1 pixel detector: 4 barrel layers and 3 disks per side (layer ids above)."""

    barrel: tuple[BarrelLayer, ...]
    disks: tuple[Disk, ...]
    pitch_x: float  # cm, along local u
    pitch_y: float  # cm, along local v
    thickness: float  # cm

    def layer(self, layer_id: int) -> BarrelLayer | Disk:
        """The barrel layer or disk with pixel layer id ``layer_id`` (0-9)."""
        if 0 <= layer_id < len(self.barrel):
            return self.barrel[layer_id]
        k = layer_id - len(self.barrel)
        if 0 <= k < len(self.disks):
            return self.disks[k]
        raise ValueError(
            f"pixel layer id {layer_id} does not exist; valid ids 0-{self.n_layers - 1}")

    @property
    def n_layers(self) -> int:
        return len(self.barrel) + len(self.disks)

    def local_to_global(self, layer: np.ndarray, module: np.ndarray, u: np.ndarray,
                        v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global ``(x, y, z)`` (cm) of hits given by layer id, module and local ``(u, v)``."""
        layer = np.asarray(layer)
        x, y, z = (np.zeros(layer.shape) for _ in range(3))
        for lid in np.unique(layer):
            m = layer == lid
            x[m], y[m], z[m] = self.layer(int(lid)).local_to_global(
                np.asarray(module)[m], np.asarray(u)[m], np.asarray(v)[m])
        return x, y, z


@dataclass(frozen=True)
class CaloLayer:
    """One calorimeter layer: a projective eta-phi grid (uniform in eta and phi)."""

    index: int
    name: str
    section: str  # "ECAL" or "HCAL"
    eta_max: float
    n_eta: int
    n_phi: int

    @property
    def deta(self) -> float:
        return 2.0 * self.eta_max / self.n_eta

    @property
    def dphi(self) -> float:
        return 2.0 * math.pi / self.n_phi

    @property
    def n_cells(self) -> int:
        return self.n_eta * self.n_phi

    def ieta(self, eta: np.ndarray) -> np.ndarray:
        """Eta bin (int64; outside ``[0, n_eta)`` when outside the layer's coverage)."""
        return np.floor((np.asarray(eta) + self.eta_max) / self.deta).astype(np.int64)

    def iphi(self, phi: np.ndarray) -> np.ndarray:
        """Phi bin (int64, wrapped into ``[0, n_phi)``)."""
        return np.floor((np.asarray(phi) + math.pi) / self.dphi).astype(np.int64) % self.n_phi

    def eta_edges(self) -> np.ndarray:
        return -self.eta_max + self.deta * np.arange(self.n_eta + 1)

    def phi_edges(self) -> np.ndarray:
        return -math.pi + self.dphi * np.arange(self.n_phi + 1)


@dataclass(frozen=True, eq=False)
class Calorimeter:
    """ECAL + HCAL cell grids with per-cell noise; arrays are indexed by cell id.

    Attributes (each of length :attr:`n_cells`, indexed by cell id)
    ----------------------------------------------------------------
    cell_layer: int32 layer index;  cell_ieta, cell_iphi: int32 grid indices;
    cell_eta, cell_phi: float64 cell centre;  cell_deta, cell_dphi: float64 cell size;
    noise_sigma: float32 electronic noise sigma (GeV).
    """

    layers: tuple[CaloLayer, ...]
    layer_offset: np.ndarray  # int64, len(layers) + 1
    noise_sigma: np.ndarray
    ecal_radius: float  # cm
    ecal_endcap_z: float  # cm
    cell_layer: np.ndarray = field(repr=False)
    cell_ieta: np.ndarray = field(repr=False)
    cell_iphi: np.ndarray = field(repr=False)
    cell_eta: np.ndarray = field(repr=False)
    cell_phi: np.ndarray = field(repr=False)
    cell_deta: np.ndarray = field(repr=False)
    cell_dphi: np.ndarray = field(repr=False)

    @property
    def n_cells(self) -> int:
        return int(self.layer_offset[-1])

    def layer_index(self, name: str) -> int:
        for lay in self.layers:
            if lay.name == name:
                return lay.index
        raise ValueError(f"no calorimeter layer {name!r}; layers: {[x.name for x in self.layers]}")

    def section_layers(self, section: str) -> tuple[int, ...]:
        """Indices of the layers of ``"ECAL"`` or ``"HCAL"``."""
        return tuple(lay.index for lay in self.layers if lay.section == section)

    def cell_id(self, layer: int, ieta: np.ndarray, iphi: np.ndarray) -> np.ndarray:
        """Cell id (int64) from layer index and grid indices (``iphi`` is wrapped)."""
        lay = self.layers[layer]
        return (self.layer_offset[layer] + np.asarray(ieta) * lay.n_phi
                + np.asarray(iphi) % lay.n_phi).astype(np.int64)

    def find_cells(self, layer: int, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Cell id containing each ``(eta, phi)`` in ``layer``; -1 outside the coverage."""
        lay = self.layers[layer]
        ie = lay.ieta(eta)
        inside = (ie >= 0) & (ie < lay.n_eta)
        return np.where(inside, self.cell_id(layer, np.clip(ie, 0, lay.n_eta - 1),
                                             lay.iphi(phi)), -1)

    @functools.cached_property
    def _neighbour_csr(self) -> tuple[np.ndarray, np.ndarray]:
        return _build_neighbours(self)

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell neighbours as CSR arrays ``(offsets, indices)``.

        The neighbours of cell ``c`` are ``indices[offsets[c]:offsets[c + 1]]`` (int32, sorted):
        the up to 8 cells sharing an edge or a corner in the same layer (phi wraps, eta does
        not), and the cells of the layers just inside and just outside (``layer +- 1``, across
        the ECAL/HCAL boundary too) whose eta-phi area overlaps the cell's.  The relation is
        symmetric.  ``offsets`` is int64 of length ``n_cells + 1``.  Computed once and cached.
        """
        return self._neighbour_csr


@dataclass(frozen=True, eq=False)
class Geometry:
    """The whole detector: field, pixel tracker, calorimeter, and the config it came from."""

    config: DetectorConfig
    b_field: float  # T
    pixel: PixelDetector
    calo: Calorimeter


def build_geometry(cfg: DetectorConfig) -> Geometry:
    """Build the detector described by ``cfg``."""
    barrel = tuple(
        BarrelLayer(i, float(r), cfg.barrel_half_length, int(n), cfg.barrel_modules_z)
        for i, (r, n) in enumerate(zip(cfg.barrel_radii, cfg.barrel_ladders, strict=True))
    )
    nb = len(barrel)
    disks = tuple(
        Disk(nb + side * len(cfg.disk_z) + k, sign * float(z),
             tuple(map(float, cfg.disk_ring_radii)), tuple(map(int, cfg.disk_ring_modules)))
        for side, sign in enumerate((1.0, -1.0))
        for k, z in enumerate(cfg.disk_z)
    )
    pixel = PixelDetector(barrel, disks, cfg.pixel_pitch_x, cfg.pixel_pitch_y, cfg.pixel_thickness)
    return Geometry(cfg, cfg.b_field, pixel, _build_calorimeter(cfg))


def _build_calorimeter(cfg: DetectorConfig) -> Calorimeter:
    layers = tuple(
        CaloLayer(i, name, sec, float(em), int(ne), int(nphi))
        for i, (name, sec, em, ne, nphi) in enumerate(
            zip(cfg.calo_names, cfg.calo_sections, cfg.calo_eta_max, cfg.calo_n_eta,
                cfg.calo_n_phi, strict=True))
    )
    offsets = np.cumsum([0] + [lay.n_cells for lay in layers]).astype(np.int64)
    names = ("layer", "ieta", "iphi", "eta", "phi", "deta", "dphi", "noise")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for lay in layers:
        ieta, iphi = np.divmod(np.arange(lay.n_cells, dtype=np.int64), lay.n_phi)
        eta = -lay.eta_max + (ieta + 0.5) * lay.deta
        # Noise grows towards high |eta| and has a fixed cell-to-cell pattern (a property of
        # the detector, seeded by the layer index, independent of any run's seed).
        pattern = np.random.default_rng(1000 + lay.index).normal(0.0, 1.0, lay.n_cells)
        growth = 1.0 + cfg.calo_noise_eta_slope * (np.abs(eta) / lay.eta_max) ** 2
        sigma = cfg.calo_noise[lay.index] * growth
        sigma = sigma * np.clip(1.0 + cfg.calo_noise_spread * pattern, 0.5, 1.5)
        parts["layer"].append(np.full(lay.n_cells, lay.index, np.int32))
        parts["ieta"].append(ieta.astype(np.int32))
        parts["iphi"].append(iphi.astype(np.int32))
        parts["eta"].append(eta)
        parts["phi"].append(-math.pi + (iphi + 0.5) * lay.dphi)
        parts["deta"].append(np.full(lay.n_cells, lay.deta))
        parts["dphi"].append(np.full(lay.n_cells, lay.dphi))
        parts["noise"].append(sigma.astype(np.float32))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    for a in cat.values():
        a.setflags(write=False)
    return Calorimeter(
        layers, offsets, cat["noise"], cfg.ecal_radius, cfg.ecal_endcap_z,
        cat["layer"], cat["ieta"], cat["iphi"], cat["eta"], cat["phi"], cat["deta"], cat["dphi"],
    )


def _overlapping_bins(lo: np.ndarray, hi: np.ndarray, edge0: float, width: float, n: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """First and last bin (inclusive) of a uniform binning overlapping each ``[lo, hi]``
    by more than a rounding error; ``first > last`` when none does."""
    eps = 1e-9 * width
    first = np.floor((lo - edge0 + eps) / width).astype(np.int64)
    last = np.ceil((hi - edge0 - eps) / width).astype(np.int64) - 1
    return np.maximum(first, 0), np.minimum(last, n - 1)


def _build_neighbours(calo: Calorimeter) -> tuple[np.ndarray, np.ndarray]:
    """CSR neighbour list (see :meth:`Calorimeter.neighbours`)."""
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for lay in calo.layers:
        ieta, iphi = np.divmod(np.arange(lay.n_cells, dtype=np.int64), lay.n_phi)
        ids = calo.layer_offset[lay.index] + np.arange(lay.n_cells, dtype=np.int64)
        # Same layer: the 8 surrounding cells; phi wraps, eta stops at the edge.
        for de in (-1, 0, 1):
            for dp in (-1, 0, 1):
                if de == 0 and dp == 0:
                    continue
                je = ieta + de
                ok = (je >= 0) & (je < lay.n_eta)
                if lay.n_phi <= 2 and dp != 0:
                    ok &= (iphi + dp) % lay.n_phi != iphi
                src.append(ids[ok])
                dst.append(calo.cell_id(lay.index, je[ok], iphi[ok] + dp))
        # Next layer outwards (the inward relation is its mirror): overlapping eta-phi areas.
        if lay.index + 1 < len(calo.layers):
            nxt = calo.layers[lay.index + 1]
            e_lo = -lay.eta_max + ieta * lay.deta
            p_lo = iphi * lay.dphi
            e0, e1 = _overlapping_bins(e_lo, e_lo + lay.deta, -nxt.eta_max, nxt.deta, nxt.n_eta)
            # phi measured from -pi in both grids; a cell never spans the wrap point.
            p0, p1 = _overlapping_bins(p_lo, p_lo + lay.dphi, 0.0, nxt.dphi, nxt.n_phi)
            n_e = np.maximum(e1 - e0 + 1, 0)
            n_p = np.maximum(p1 - p0 + 1, 0)
            max_e, max_p = int(n_e.max(initial=0)), int(n_p.max(initial=0))
            for a in range(max_e):
                for b in range(max_p):
                    ok = (a < n_e) & (b < n_p)
                    src.append(ids[ok])
                    dst.append(calo.cell_id(nxt.index, e0[ok] + a, p0[ok] + b))
    s = np.concatenate(src)
    d = np.concatenate(dst)
    s, d = np.concatenate([s, d]), np.concatenate([d, s])  # symmetrise (cross-layer pairs)
    pairs = np.unique(s * calo.n_cells + d)  # sorts by (cell, neighbour), drops duplicates
    s, d = np.divmod(pairs, calo.n_cells)
    offsets = np.zeros(calo.n_cells + 1, dtype=np.int64)
    np.cumsum(np.bincount(s, minlength=calo.n_cells), out=offsets[1:])
    indices = d.astype(np.int32)
    offsets.setflags(write=False)
    indices.setflags(write=False)
    return offsets, indices


@functools.lru_cache(maxsize=8)
def geometry_for(cfg: DetectorConfig) -> Geometry:
    """The geometry of ``cfg``, built once per distinct config."""
    return build_geometry(cfg)


def default_geometry() -> Geometry:
    """The geometry of the default :class:`~hltemu.config.DetectorConfig` (cached)."""
    return geometry_for(DetectorConfig())
