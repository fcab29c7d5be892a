"""Charged particles through the pixel detector: helices, crossings, clusters with charge pads.

Steps, per event:

1. :func:`propagate` follows each charged particle from its production vertex as a helix in the
   uniform solenoid field (B along +z) and returns every crossing with a barrel cylinder or a
   disk plane within the first turn of the helix and before the particle leaves the tracker
   volume (``DetectorConfig.tracker_radius``).  No material, no secondaries, no energy loss.
2. :func:`digitize` drops crossings with probability ``1 - hit_efficiency`` and turns each
   remaining crossing into a pixel cluster: the ionisation (Landau/Moyal-distributed, along the
   straight path through the sensor) drifts with the Lorentz angle and diffuses onto the pixel
   grid, each pixel gets Gaussian noise, pixels under threshold are dropped and the rest
   digitised.  The hit is the charge-weighted centroid (so its resolution is the pixel
   detector's), the sizes are the cluster's extent along local x and y, and the pad is the
   ``PIXEL_PAD_SHAPE`` window of pixel charges centred on the centroid's pixel
   (``pad[i, j]``: ``i`` along local x, ``j`` along local y; the centre pixel is ``pad[4, 4]``
   for an 8 x 8 pad).
3. A few noise hits (single pixels, ``sim_index = -1``) are added per layer.

Additivity (pileup): clusters are digitised one by one (pixel noise, threshold and ADC per
cluster, from the cluster's own seed), and two clusters sharing pixels are *not* merged; so the
hits of an event are exactly the union of the hits of its interactions
(:func:`particle_hits`) plus the event's noise hits (:func:`finish_hits`).  Merged clusters in
dense jets, a real effect, are not modelled.

Helix conventions: ``s`` is the transverse arc length from the vertex (cm), ``phi(s) = phi0 -
h s / R`` with ``h = sign(q)`` (B > 0 along +z bends positive particles clockwise seen from
+z), ``R = pt / (0.3 |q| B)`` (:func:`helix_radius`), ``z(s) = z0 + s pz / pt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from hltemu.geometry import C_LIGHT, BarrelLayer, Disk, Geometry
from hltemu.io import PIXEL_PAD_SHAPE


def helix_radius(pt: np.ndarray, charge: np.ndarray, b_field: float) -> np.ndarray:
    """Radius of curvature (cm) of ``pt`` (GeV) and ``charge`` (e) in ``b_field`` (T)."""
    return 100.0 * np.asarray(pt) / (C_LIGHT * np.abs(np.asarray(charge)) * b_field)


@dataclass
class Crossings:
    """Helix crossings with pixel surfaces (true positions, before digitisation).

    All arrays have one entry per crossing: ``particle`` (index into the arrays given to
    :func:`propagate`), ``layer`` (pixel layer id), ``s`` (transverse arc length, cm), position
    ``x, y, z`` (cm) and unit direction ``dx, dy, dz``.  Ordered by particle, then ``s``.
    """

    particle: np.ndarray
    layer: np.ndarray
    s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    dz: np.ndarray

    def __len__(self) -> int:
        return int(self.particle.shape[0])


def _helix_at(x0, y0, z0, phi0, radius, h, cot, s):
    """Position and transverse direction angle of the helix at arc length ``s``."""
    phi = phi0 - h * s / radius
    x = x0 + h * radius * (np.sin(phi0) - np.sin(phi))
    y = y0 + h * radius * (np.cos(phi) - np.cos(phi0))
    return x, y, z0 + s * cot, phi


def _cylinder_arcs(x0, y0, phi0, radius, h, r_cyl):
    """Arc lengths ``(s1, s2)`` in ``[0, 2 pi R)``, ``s1 <= s2``, where the helix's transverse
    circle meets the circle ``r = r_cyl``; NaN where it never does."""
    xc = x0 + h * radius * np.sin(phi0)
    yc = y0 - h * radius * np.cos(phi0)
    d = np.hypot(xc, yc)
    # Point on the circle relative to its centre: R (-h sin phi, h cos phi); |c + that| = r_cyl
    # gives sin(alpha - phi) = h k with alpha the azimuth of the centre.
    with np.errstate(divide="ignore", invalid="ignore"):
        k = (r_cyl**2 - d**2 - radius**2) / (2.0 * radius * d)
        a = np.arcsin(np.where(np.abs(k) <= 1.0, h * k, np.nan))
    alpha = np.arctan2(yc, xc)
    turn = 2.0 * np.pi * radius
    s_a = np.remainder(h * radius * (phi0 - (alpha - a)), turn)
    s_b = np.remainder(h * radius * (phi0 - (alpha - np.pi + a)), turn)
    return np.fmin(s_a, s_b), np.fmax(s_a, s_b)


def propagate(geom: Geometry, px: np.ndarray, py: np.ndarray, pz: np.ndarray,
              charge: np.ndarray, vx: np.ndarray, vy: np.ndarray, vz: np.ndarray) -> Crossings:
    """Crossings of charged particles (momenta in GeV, vertices in cm) with every pixel surface.

    Neutral particles (``charge == 0``) give no crossing.  A particle is followed for at most one
    turn of its helix and stops where it leaves the tracker volume (``tracker_radius``).
    """
    px, py, pz, vx, vy, vz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, vx, vy, vz))
    charge = np.asarray(charge)
    idx = np.flatnonzero((charge != 0) & (np.hypot(px, py) > 0))
    pt = np.hypot(px[idx], py[idx])
    radius = helix_radius(pt, charge[idx], geom.b_field)
    h = np.sign(charge[idx]).astype(np.float64)
    phi0 = np.arctan2(py[idx], px[idx])
    cot = pz[idx] / pt
    x0, y0, z0 = vx[idx], vy[idx], vz[idx]
    # Where the particle stops: one full turn, or leaving the tracker radius if it gets there.
    s_exit, _ = _cylinder_arcs(x0, y0, phi0, radius, h, geom.config.tracker_radius)
    s_limit = np.fmin(np.where(np.isnan(s_exit), np.inf, s_exit), 2.0 * np.pi * radius)

    parts: list[tuple[np.ndarray, int, np.ndarray]] = []  # (particle rows, layer id, s)
    for lay in geom.pixel.barrel:
        s1, s2 = _cylinder_arcs(x0, y0, phi0, radius, h, lay.radius)
        for s in (s1, s2):
            ok = (s > 0) & (s < s_limit) & (np.abs(z0 + s * cot) <= lay.half_length)
            parts.append((np.flatnonzero(ok), lay.layer, s[ok]))
    for disk in geom.pixel.disks:
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (disk.z - z0) / cot
        ok = np.isfinite(s) & (s > 0) & (s < s_limit)
        rows = np.flatnonzero(ok)
        x, y, _, _ = _helix_at(x0[rows], y0[rows], z0[rows], phi0[rows], radius[rows], h[rows],
                               cot[rows], s[rows])
        r = np.hypot(x, y)
        keep = (r >= disk.r_min) & (r < disk.r_max)
        parts.append((rows[keep], disk.layer, s[rows[keep]]))

    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    layer = np.concatenate([np.full(p[0].shape[0], p[1], np.int32) for p in parts]) if parts \
        else np.zeros(0, np.int32)
    s = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
    order = np.lexsort((s, rows))
    rows, layer, s = rows[order], layer[order], s[order]
    x, y, z, phi = _helix_at(x0[rows], y0[rows], z0[rows], phi0[rows], radius[rows], h[rows],
                             cot[rows], s)
    norm = np.sqrt(1.0 + cot[rows] ** 2)
    return Crossings(idx[rows], layer, s, x, y, z, np.cos(phi) / norm, np.sin(phi) / norm,
                     cot[rows] / norm)


# -- digitisation ---------------------------------------------------------------------------
#: Largest cluster window (pixels along x, y) simulated per hit; charge beyond it is lost.
_WINDOW = (32, 64)


@njit(cache=True, inline="always")
def _splitmix64(state: np.uint64) -> tuple:
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@njit(cache=True)
def _cluster_kernel(u0, v0, du, dv, dl, charge, seeds, pitch_x, pitch_y, diffusion, noise,
                    threshold, adc_step, pad_nx, pad_ny, out_pad, out_u, out_v, out_sx, out_sy,
                    out_q):  # pragma: no cover - compiled
    """Per hit: spread the charge of the path through the sensor on the pixel grid, add pixel
    noise, threshold, digitise; write the centroid, sizes, total charge and the pad.

    The path runs from ``(u0 - du/2, v0 - dv/2)`` to ``(u0 + du/2, v0 + dv/2)`` (cm, module
    frame); the Lorentz drift adds ``dl`` along u across the sensor depth.  ``seeds`` (uint64)
    make the pixel noise of each hit reproducible.  A hit with no pixel over threshold gets
    ``out_q = 0``.
    """
    wx, wy = _WINDOW
    grid = np.zeros((wx, wy))
    inv_sqrt2 = 1.0 / math.sqrt(2.0)
    for h in range(u0.shape[0]):
        span_u = abs(du[h]) + abs(dl[h])
        n_steps = 4 * int(math.ceil(max(span_u / pitch_x, abs(dv[h]) / pitch_y))) + 8
        n_steps = min(n_steps, 512)
        cx0 = int(math.floor(u0[h] / pitch_x)) - wx // 2
        cy0 = int(math.floor(v0[h] / pitch_y)) - wy // 2
        q_step = charge[h] / n_steps
        bx0, bx1, by0, by1 = wx, -1, wy, -1  # box of the pixels touched
        for k in range(n_steps):
            f = (k + 0.5) / n_steps - 0.5
            uk = u0[h] + f * (du[h] + dl[h])
            vk = v0[h] + f * dv[h]
            iu = int(math.floor(uk / pitch_x))
            iv = int(math.floor(vk / pitch_y))
            # Diffusion: Gaussian integrated over this pixel and its neighbours.
            for a in range(-1, 2):
                gx = iu + a - cx0
                if gx < 0 or gx >= wx:
                    continue
                lo = ((iu + a) * pitch_x - uk) / diffusion * inv_sqrt2
                hi = ((iu + a + 1) * pitch_x - uk) / diffusion * inv_sqrt2
                fu = 0.5 * (math.erf(hi) - math.erf(lo))
                if fu <= 0.0:
                    continue
                for b in range(-1, 2):
                    gy = iv + b - cy0
                    if gy < 0 or gy >= wy:
                        continue
                    lo = ((iv + b) * pitch_y - vk) / diffusion * inv_sqrt2
                    hi = ((iv + b + 1) * pitch_y - vk) / diffusion * inv_sqrt2
                    fv = 0.5 * (math.erf(hi) - math.erf(lo))
                    if fv <= 0.0:
                        continue
                    grid[gx, gy] += q_step * fu * fv
                    bx0, bx1 = min(bx0, gx), max(bx1, gx)
                    by0, by1 = min(by0, gy), max(by1, gy)
        # Noise on every pixel that carries charge (empty pixels stay under threshold),
        # threshold, digitisation; centroid and extent of the pixels kept.
        state = seeds[h]
        q_tot = 0.0
        su = 0.0
        sv = 0.0
        xmin, xmax, ymin, ymax = wx, -1, wy, -1
        for gx in range(bx0, bx1 + 1):
            for gy in range(by0, by1 + 1):
                q = grid[gx, gy]
                if q <= 0.0:
                    continue
                state, r1 = _splitmix64(state)
                state, r2 = _splitmix64(state)
                e1 = (float(r1 >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)
                e2 = float(r2 >> np.uint64(11)) * (1.0 / 9007199254740992.0)
                q += noise * math.sqrt(-2.0 * math.log(e1)) * math.cos(2.0 * math.pi * e2)
                if q < threshold:
                    grid[gx, gy] = 0.0
                    continue
                q = adc_step * math.floor(q / adc_step + 0.5)
                grid[gx, gy] = q
                q_tot += q
                su += q * ((cx0 + gx + 0.5) * pitch_x)
                sv += q * ((cy0 + gy + 0.5) * pitch_y)
                xmin = min(xmin, gx)
                xmax = max(xmax, gx)
                ymin = min(ymin, gy)
                ymax = max(ymax, gy)
        out_q[h] = q_tot
        if q_tot <= 0.0:
            grid[bx0:bx1 + 1, by0:by1 + 1] = 0.0
            continue
        uc = su / q_tot
        vc = sv / q_tot
        out_u[h] = uc
        out_v[h] = vc
        out_sx[h] = xmax - xmin + 1
        out_sy[h] = ymax - ymin + 1
        px0 = int(math.floor(uc / pitch_x)) - cx0 - pad_nx // 2
        py0 = int(math.floor(vc / pitch_y)) - cy0 - pad_ny // 2
        for i in range(pad_nx):
            for j in range(pad_ny):
                gx = px0 + i
                gy = py0 + j
                if 0 <= gx < wx and 0 <= gy < wy:
                    out_pad[h, i, j] = grid[gx, gy]
        grid[bx0:bx1 + 1, by0:by1 + 1] = 0.0  # clean for the next hit


def _local_frame(surface: BarrelLayer | Disk, module: np.ndarray, x: np.ndarray, y: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (u, v, normal) of the module frame at each point, as (n, 3) arrays."""
    n = x.shape[0]
    if isinstance(surface, BarrelLayer):
        r = np.hypot(x, y)
        eu = np.stack([-y / r, x / r, np.zeros(n)], axis=1)
        ev = np.tile([0.0, 0.0, 1.0], (n, 1))
        en = np.stack([x / r, y / r, np.zeros(n)], axis=1)
    else:
        _, phi_c = surface._module_frame(module)
        c, s = np.cos(phi_c), np.sin(phi_c)
        eu = np.stack([-s, c, np.zeros(n)], axis=1)
        ev = np.stack([c, s, np.zeros(n)], axis=1)
        en = np.tile([0.0, 0.0, math.copysign(1.0, surface.z)], (n, 1))
    return eu, ev, en


def digitize(geom: Geometry, cross: Crossings, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Pixel hits (clusters) from crossings, efficiency applied; ``sim_index`` is
    ``cross.particle``.  Returns the PixelHit columns of one event (see hltemu.io), in the
    order of the crossings, hits without charge over threshold removed."""
    cfg = geom.config
    pix = geom.pixel
    keep = rng.random(len(cross)) < cfg.hit_efficiency
    idx = np.flatnonzero(keep)
    n = idx.shape[0]
    moyal = -np.log(np.square(rng.standard_normal(n)) + 1e-300)
    seeds = rng.integers(0, np.iinfo(np.int64).max, n, dtype=np.int64).astype(np.uint64)
    nx, ny = PIXEL_PAD_SHAPE
    out = {
        "module": np.zeros(n, np.int32), "u": np.zeros(n), "v": np.zeros(n),
        "size_x": np.zeros(n, np.int32), "size_y": np.zeros(n, np.int32),
        "charge": np.zeros(n), "pad": np.zeros((n, nx, ny), np.float32),
    }
    layer = cross.layer[idx]
    for lid in np.unique(layer):
        m = np.flatnonzero(layer == lid)
        sel = idx[m]
        surf = pix.layer(int(lid))
        x, y, z = cross.x[sel], cross.y[sel], cross.z[sel]
        if isinstance(surf, BarrelLayer):
            module, u, v = surf.global_to_local(np.arctan2(y, x), z)
            tan_l = cfg.lorentz_tan_barrel
        else:
            module, u, v = surf.global_to_local(x, y)
            tan_l = cfg.lorentz_tan_disk
        eu, ev, en = _local_frame(surf, module, x, y)
        d = np.stack([cross.dx[sel], cross.dy[sel], cross.dz[sel]], axis=1)
        d_u, d_v, d_n = (d * eu).sum(1), (d * ev).sum(1), np.abs((d * en).sum(1))
        d_n = np.maximum(d_n, 1e-3)  # grazing crossings: the window caps the cluster length
        t = pix.thickness
        path = t / d_n
        landau = np.clip(1.0 + cfg.landau_width * moyal[m], 0.3, 20.0)
        charge = cfg.charge_mpv_per_cm * path * landau
        pad = np.zeros((m.shape[0], nx, ny), np.float32)
        res = [np.zeros(m.shape[0]) for _ in range(3)]
        sx, sy = np.zeros(m.shape[0], np.int64), np.zeros(m.shape[0], np.int64)
        _cluster_kernel(u, v, t * d_u / d_n, t * d_v / d_n, np.full(m.shape[0], t * tan_l),
                        charge, seeds[m], pix.pitch_x, pix.pitch_y, cfg.diffusion_sigma,
                        cfg.pixel_noise, cfg.pixel_threshold, cfg.pixel_adc_step, nx, ny, pad,
                        res[0], res[1], sx, sy, res[2])
        out["module"][m] = module
        out["u"][m], out["v"][m], out["charge"][m] = res
        out["size_x"][m], out["size_y"][m] = sx, sy
        out["pad"][m] = pad
    ok = out["charge"] > 0
    hits = {k: v[ok] for k, v in out.items()}
    hits["layer"] = layer[ok].astype(np.int32)
    hits["sim_index"] = cross.particle[idx][ok].astype(np.int32)
    return hits


def noise_hits(geom: Geometry, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Single-pixel noise hits: Poisson(``noise_hits_per_layer``) per layer, uniform over it."""
    cfg = geom.config
    pix = geom.pixel
    nx, ny = PIXEL_PAD_SHAPE
    counts = rng.poisson(cfg.noise_hits_per_layer, pix.n_layers)
    layer = np.repeat(np.arange(pix.n_layers, dtype=np.int32), counts)
    n = layer.shape[0]
    module = np.zeros(n, np.int64)
    u, v = np.zeros(n), np.zeros(n)
    r1, r2, r3 = rng.random(n), rng.random(n), rng.random(n)
    for lid in np.unique(layer):
        m = layer == lid
        surf = pix.layer(int(lid))
        if isinstance(surf, BarrelLayer):
            module[m] = np.minimum((r1[m] * surf.n_modules).astype(np.int64), surf.n_modules - 1)
            width = surf.radius * surf.ladder_dphi
            u[m] = (r2[m] - 0.5) * width
            v[m] = (r3[m] - 0.5) * surf.module_length
        else:
            module[m] = np.minimum((r1[m] * surf.n_modules).astype(np.int64), surf.n_modules - 1)
            starts = np.cumsum((0, *surf.ring_modules))
            ring = np.searchsorted(starts, module[m], side="right") - 1
            r_lo = np.asarray(surf.ring_radii)[ring]
            r_hi = np.asarray(surf.ring_radii)[ring + 1]
            r_c = 0.5 * (r_lo + r_hi)
            u[m] = (r2[m] - 0.5) * 2.0 * np.pi * r_c / np.asarray(surf.ring_modules)[ring]
            v[m] = (r3[m] - 0.5) * (r_hi - r_lo)
    # Snap to pixel centres: a noise hit is one pixel.
    u = (np.floor(u / pix.pitch_x) + 0.5) * pix.pitch_x
    v = (np.floor(v / pix.pitch_y) + 0.5) * pix.pitch_y
    q = cfg.pixel_threshold + rng.exponential(3.0 * cfg.pixel_noise + 500.0, n)
    q = cfg.pixel_adc_step * np.floor(q / cfg.pixel_adc_step + 0.5)
    pad = np.zeros((n, nx, ny), np.float32)
    pad[:, nx // 2, ny // 2] = q
    return {
        "layer": layer, "module": module.astype(np.int32), "u": u, "v": v,
        "size_x": np.ones(n, np.int32), "size_y": np.ones(n, np.int32), "charge": q, "pad": pad,
        "sim_index": np.full(n, -1, np.int32),
    }


def particle_hits(geom: Geometry, px: np.ndarray, py: np.ndarray, pz: np.ndarray,
                  charge: np.ndarray, vx: np.ndarray, vy: np.ndarray, vz: np.ndarray,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Pixel hits of the given particles, without noise hits, in the module frame (columns
    ``layer, module, u, v, size_x, size_y, charge, pad, sim_index``; ``sim_index`` is the
    particle's index in the input arrays).  :func:`finish_hits` adds the noise hits and the
    global positions.

    Every cluster is digitised on its own (the pixel noise of a cluster comes from the cluster's
    own seed, drawn from ``rng``): two particles crossing the same pixels give two hits, not one
    merged cluster, so the hits of a set of particles are the union of the hits of its parts.
    """
    return digitize(geom, propagate(geom, px, py, pz, charge, vx, vy, vz), rng)


def finish_hits(geom: Geometry, parts: list[dict[str, np.ndarray]],
                noise_rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """PixelHit columns of one event from the hits of its interactions (:func:`particle_hits`,
    ``sim_index`` already mapped to the event's particles) plus noise hits drawn from
    ``noise_rng`` (none if ``None``): ordered by layer id, then module, then the order of
    ``parts`` (noise hits last).  Global positions are computed from the module-local cluster
    centroid, so barrel hits lie on their cylinder and disk hits on their plane."""
    if noise_rng is not None:
        parts = [*parts, noise_hits(geom, noise_rng)]
    keys = ("layer", "module", "u", "v", "size_x", "size_y", "charge", "pad", "sim_index")
    nx, ny = PIXEL_PAD_SHAPE
    if parts:
        cols = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    else:
        cols = {k: np.zeros((0, nx, ny) if k == "pad" else 0) for k in keys}
    order = np.lexsort((cols["module"], cols["layer"]))
    cols = {k: v[order] for k, v in cols.items()}
    x, y, z = geom.pixel.local_to_global(cols["layer"].astype(np.int32),
                                         cols["module"].astype(np.int32), cols["u"], cols["v"])
    out = {"x": x, "y": y, "z": z, **cols}
    return {
        "x": out["x"].astype(np.float32), "y": out["y"].astype(np.float32),
        "z": out["z"].astype(np.float32), "layer": out["layer"].astype(np.int32),
        "module": out["module"].astype(np.int32), "u": out["u"].astype(np.float32),
        "v": out["v"].astype(np.float32), "size_x": out["size_x"].astype(np.int32),
        "size_y": out["size_y"].astype(np.int32), "charge": out["charge"].astype(np.float32),
        "pad": out["pad"].astype(np.float32), "sim_index": out["sim_index"].astype(np.int32),
    }


def simulate_pixels(geom: Geometry, px: np.ndarray, py: np.ndarray, pz: np.ndarray,
                    charge: np.ndarray, vx: np.ndarray, vy: np.ndarray, vz: np.ndarray,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """PixelHit columns of one set of particles: their hits (:func:`particle_hits`) plus noise
    hits (:func:`finish_hits`), both from ``rng``.

    ``sim_index`` of a particle hit is the particle's index in the input arrays (-1 for noise).
    Hits are ordered by layer id, then module, then the particles' order.
    """
    return finish_hits(geom, [particle_hits(geom, px, py, pz, charge, vx, vy, vz, rng)], rng)
