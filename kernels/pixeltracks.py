"""Pixel tracks from doublets (stage ``pixeltracks``): the triplet test of Patatrack's cellular
automaton, the depth-first n-tuplet search, the fit and the shared-hit cleaning, written once
(:func:`_make`) and compiled for plain Python (the reference's arithmetic), Numba's CPU target
and CUDA.

The rules, formulas and units are stated in :mod:`hltemu.stages.pixeltracks`.

Data layout
-----------
* Hits: float64 ``x, y, z, r`` [cm] and int32 ``layer``, indexed by the hit's row in the
  batch's PixelHit collection.  ``layer_flags[layer]`` (uint8) holds :data:`FLAG_START` (cells
  whose inner hit is on this layer start the n-tuplet search), :data:`FLAG_BARREL` and
  :data:`FLAG_INNERMOST` (the first barrel layer: the inner dca cut).
* Cells (doublets): int64 ``cell_inner``, ``cell_outer`` (batch hit rows), sorted by (inner,
  outer), hence by event; the cells whose inner hit is ``h`` are
  ``hit_cells[h]:hit_cells[h + 1]``.
* Outer neighbours of cell ``c``: ``nb[nb_offsets[c]:nb_offsets[c + 1]]``, ascending.
* Candidates (n-tuplets): ``tup_hits[t, :tup_n[t]]`` hit rows inner to outer (-1 after),
  those of start cell ``c`` at ``tup_offsets[c]:tup_offsets[c + 1]`` in depth-first order.
* Per hit the fit's errors: float64 ``err_t`` (r-phi) and ``err_l`` (z on a barrel layer, r
  on a disk) [cm]; per layer id ``layer_ms`` (float64): Highland's ``theta0^2 p^2``
  [GeV^2] at normal incidence, 0 without material.
* Fit results ``par[t, PAR_*]`` (the parameters, chi2, pT and the covariance) and the
  quality flag ``good[t]`` (uint8).
* ``cuts``: float64 indexed by ``CUT_*``.

Steps, each a loop over independent items (a ``prange`` iteration or a CUDA thread):

1. per cell: count its outer neighbours, then (after a prefix sum) write them;
2. per start cell: count its n-tuplets by a depth-first walk, then write them;
3. per candidate: fit it (Karimaki's prefit, one Gauss-Newton step of the weighted circle
   fit, the weighted line fit: generalised least squares by Cholesky factorisation on
   thread-local arrays) and apply the quality cuts;
4. per event: walk its good candidates in rank order (sorted by the stage) and keep each whose
   hits no kept candidate uses.

Why the result does not depend on thread order: every item writes only its own slots, found
by counts and prefix sums (no atomic counter); a walk visits neighbours in ascending cell order;
the cleaning of an event is one sequential walk and events own disjoint hit rows.  Every float
operation that decides something (a triplet cut, a fitted quantity that is cut on or ranked)
is one IEEE-754 operation through :mod:`hltemu.kernels.ieee`'s sets or ``sqrt`` (correctly
rounded everywhere), in the same order on every target: Python, Numba CPU and CUDA give the
same bits.  No transcendental function is used here (phi and eta are computed by the stage;
the fit rotates phi by its step with the series of sin and cos).

Numba's on-disk cache: after editing :mod:`hltemu.kernels.ieee`, clear
``kernels/__pycache__/pixeltracks*``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from .ieee import CPU_OPS, CUDA_OPS, PY_OPS

#: Most hits of an n-tuplet (Patatrack: at most 4 cells).
MAX_HITS = 5
#: Most cells of an n-tuplet.
MAX_CELLS = MAX_HITS - 1

# -- layer flags (layer_flags[layer]) ---------------------------------------------------------
FLAG_START = 1  #: cells whose inner hit is on this layer start the n-tuplet search
FLAG_BARREL = 2  #: a barrel layer (r-z alignment cut: CAThetaCutBarrel, else Forward)
FLAG_INNERMOST = 4  #: the innermost barrel layer (dca cut: dcaCutInnerTriplet, else Outer)

# -- the cuts vector (cuts[column]) -----------------------------------------------------------
CUT_PTMIN = 0  #: GeV, ptmin of the r-z alignment cut
CUT_THETA_BARREL = 1  #: GeV rad, CAThetaCutBarrel
CUT_THETA_FORWARD = 2  #: GeV rad, CAThetaCutForward
CUT_DCA_INNER = 3  #: cm, dcaCutInnerTriplet
CUT_DCA_OUTER = 4  #: cm, dcaCutOuterTriplet
CUT_HARD_CURV = 5  #: 1/cm, hardCurvCut
CUT_TRIPLET_MAX_TIP = 6  #: cm
CUT_TRIPLET_MIN_PT = 7  #: GeV
CUT_TRIPLET_MAX_ZIP = 8  #: cm
CUT_QUADRUPLET_MAX_TIP = 9  #: cm, n-tuplets of 4 or more hits
CUT_QUADRUPLET_MIN_PT = 10  #: GeV
CUT_QUADRUPLET_MAX_ZIP = 11  #: cm
CUT_PT_PER_CURVATURE = 12  #: GeV cm, pT = this / |curvature|: 0.01 C_LIGHT B
CUT_MAX_CHI2 = 13  #: largest chi2 of the fit
CUT_MAX_DPHI = 14  #: rad, largest phi step from the prefit (else the fit is degenerate)
N_CUTS = 15

# -- fit results (par[t, column]) -------------------------------------------------------------
PAR_CURVATURE = 0  #: 1/cm, signed: > 0 bends clockwise seen from +z (positive charge)
PAR_COS_PHI = 1  #: cos of the direction at the point of closest approach (PCA)
PAR_SIN_PHI = 2  #: sin of it
PAR_D0 = 3  #: cm, signed transverse impact parameter: PCA . (-sin phi, cos phi)
PAR_COT_THETA = 4  #: dz / ds
PAR_Z0 = 5  #: cm, z at the PCA
PAR_CHI2 = 6  #: chi2 of the circle and line fits
PAR_PT = 7  #: GeV
# covariance of (q/pT [1/GeV], phi [rad], d0 [cm]) and of (cot theta, z0 [cm]):
PAR_COV_QPT_QPT = 8  #: 1/GeV^2
PAR_COV_QPT_PHI = 9  #: rad/GeV
PAR_COV_QPT_D0 = 10  #: cm/GeV
PAR_COV_PHI_PHI = 11  #: rad^2
PAR_COV_PHI_D0 = 12  #: rad cm
PAR_COV_D0_D0 = 13  #: cm^2
PAR_COV_COT_COT = 14  #: (cot theta)^2
PAR_COV_COT_Z0 = 15  #: cm
PAR_COV_Z0_Z0 = 16  #: cm^2
N_PAR = 17



def _make(jit, mul, add, sub, div):
    """``(triplet_passes, neighbours, walk, fit, clean)`` compiled with ``jit`` on the
    arithmetic ``mul, add, sub, div``."""
    sqrt = math.sqrt

    def circle_dca(x1, y1, ax, ay, bx, by, cross):
        """Distance [cm] of the origin from the circle through ``p1 = (x1, y1)``, ``p1 + a``
        and ``p1 + b`` (from the line when ``cross = a x b`` is 0)."""
        if cross == 0.0:
            return div(abs(sub(mul(x1, by), mul(y1, bx))), sqrt(add(mul(bx, bx), mul(by, by))))
        a2 = add(mul(ax, ax), mul(ay, ay))
        b2 = add(mul(bx, bx), mul(by, by))
        d = mul(2.0, cross)
        ux = div(sub(mul(by, a2), mul(ay, b2)), d)  # centre - p1
        uy = div(sub(mul(ax, b2), mul(bx, a2)), d)
        radius = sqrt(add(mul(ux, ux), mul(uy, uy)))
        cx, cy = add(x1, ux), add(y1, uy)
        centre = sqrt(add(mul(cx, cx), mul(cy, cy)))
        # |C|^2 - R^2 = |p1|^2 + 2 p1.u, free of the cancellation of |C| - R
        power = add(add(mul(x1, x1), mul(y1, y1)), mul(2.0, add(mul(x1, ux), mul(y1, uy))))
        return div(abs(power), add(centre, radius))

    circle_dca = jit(circle_dca)

    def triplet_passes(x1, y1, z1, r1, flags1, x2, y2, z2, r2, flags2, x3, y3, z3, r3, cuts):
        """Whether hits 1 (inner), 2 and 3 (outer) pass Patatrack's triplet cuts: r-z
        alignment, hardCurvCut and the dca of the r-phi circle to the beam line."""
        theta = cuts[CUT_THETA_BARREL] if flags2 & FLAG_BARREL else cuts[CUT_THETA_FORWARD]
        dr = abs(sub(r1, r3))
        dz = sub(z1, z3)
        d13sq = add(mul(dr, dr), mul(dz, dz))
        area2 = abs(add(add(mul(z1, sub(r2, r3)), mul(z2, sub(r3, r1))), mul(z3, sub(r1, r2))))
        if mul(area2, mul(cuts[CUT_PTMIN], sqrt(d13sq))) > mul(mul(theta, d13sq), dr):
            return False
        ax, ay = sub(x2, x1), sub(y2, y1)
        bx, by = sub(x3, x1), sub(y3, y1)
        cx, cy = sub(x3, x2), sub(y3, y2)
        lengths = mul(mul(sqrt(add(mul(ax, ax), mul(ay, ay))), sqrt(add(mul(bx, bx), mul(by, by)))),
                      sqrt(add(mul(cx, cx), mul(cy, cy))))
        if lengths == 0.0:  # two hits at one (x, y): no circle
            return False
        cross = sub(mul(ax, by), mul(ay, bx))
        if div(mul(2.0, abs(cross)), lengths) > cuts[CUT_HARD_CURV]:
            return False
        dca_max = cuts[CUT_DCA_INNER] if flags1 & FLAG_INNERMOST else cuts[CUT_DCA_OUTER]
        return circle_dca(x1, y1, ax, ay, bx, by, cross) < dca_max

    triplet_passes = jit(triplet_passes)

    def neighbours(c, cell_inner, cell_outer, hit_cells, x, y, z, r, layer, layer_flags, cuts,
                   nb, start, write):
        """Count the outer neighbours of cell ``c`` (the cells starting at its outer hit whose
        triplet passes); with ``write``, store them at ``nb[start:]`` too."""
        a, b = cell_inner[c], cell_outer[c]
        fa, fb = layer_flags[layer[a]], layer_flags[layer[b]]
        n = 0
        for j in range(hit_cells[b], hit_cells[b + 1]):
            o = cell_outer[j]
            if triplet_passes(x[a], y[a], z[a], r[a], fa, x[b], y[b], z[b], r[b], fb,
                              x[o], y[o], z[o], r[o], cuts):
                if write:
                    nb[start + n] = j
                n += 1
        return n

    neighbours = jit(neighbours)

    def walk(c0, cell_inner, cell_outer, nb_offsets, nb, min_hits, stack_cell, stack_k,
             tup_hits, tup_n, start, write):
        """Depth-first search from cell ``c0`` along outer neighbours (ascending): every path
        ending at a cell with no outer neighbour, or at :data:`MAX_CELLS` cells, that has at
        least ``min_hits`` hits is an n-tuplet.  Returns their number; with ``write`` stores
        them at ``tup_hits[start:]``, ``tup_n[start:]``."""
        found = 0
        depth = 0
        stack_cell[0] = c0
        stack_k[0] = nb_offsets[c0]
        arrived = True
        while depth >= 0:
            c = stack_cell[depth]
            if arrived and (nb_offsets[c + 1] == nb_offsets[c] or depth == MAX_CELLS - 1):
                if depth + 2 >= min_hits:
                    if write:
                        t = start + found
                        for i in range(MAX_HITS):
                            tup_hits[t, i] = -1
                        for i in range(depth + 1):
                            tup_hits[t, i] = cell_inner[stack_cell[i]]
                        tup_hits[t, depth + 1] = cell_outer[c]
                        tup_n[t] = depth + 2
                    found += 1
                depth -= 1
                arrived = False
                continue
            k = stack_k[depth]
            if k < nb_offsets[c + 1]:
                stack_k[depth] = k + 1
                depth += 1
                stack_cell[depth] = nb[k]
                stack_k[depth] = nb_offsets[nb[k]]
                arrived = True
            else:
                depth -= 1
                arrived = False
        return found

    walk = jit(walk)

    def circle_fit(hits, n, x, y, par):
        """Karimaki's closed-form circle fit (NIM A 305 (1991) 187) of hits ``hits[:n]``
        (equal weights), direction from the first to the last hit: the prefit.  Fills
        curvature, cos/sin phi and d0 of ``par``; returns 0, -1 when the fit is degenerate."""
        nf = float(n)
        sx = sy = sxx = syy = sxy = sr = sxr = syr = srr = 0.0
        for i in range(n):
            h = hits[i]
            xi, yi = x[h], y[h]
            r2 = add(mul(xi, xi), mul(yi, yi))
            sx, sy = add(sx, xi), add(sy, yi)
            sxx, syy, sxy = add(sxx, mul(xi, xi)), add(syy, mul(yi, yi)), add(sxy, mul(xi, yi))
            sr, sxr, syr = add(sr, r2), add(sxr, mul(xi, r2)), add(syr, mul(yi, r2))
            srr = add(srr, mul(r2, r2))
        xm, ym, rm = div(sx, nf), div(sy, nf), div(sr, nf)
        cxx = sub(div(sxx, nf), mul(xm, xm))
        cyy = sub(div(syy, nf), mul(ym, ym))
        cxy = sub(div(sxy, nf), mul(xm, ym))
        cxr = sub(div(sxr, nf), mul(xm, rm))
        cyr = sub(div(syr, nf), mul(ym, rm))
        crr = sub(div(srr, nf), mul(rm, rm))
        q1 = sub(mul(crr, cxy), mul(cxr, cyr))
        q2 = add(sub(mul(crr, sub(cxx, cyy)), mul(cxr, cxr)), mul(cyr, cyr))
        a, bb = mul(2.0, q1), q2  # tan(2 phi) = a / bb
        h2 = sqrt(add(mul(a, a), mul(bb, bb)))
        if not (h2 > 0.0 and crr > 0.0):
            return -1.0
        if bb >= 0.0:  # half angle without atan2: phi = atan2(a, bb) / 2 in (-pi/2, pi/2]
            cphi = sqrt(mul(0.5, add(1.0, div(bb, h2))))
            sphi = div(a, mul(mul(2.0, h2), cphi))
        else:
            sphi = sqrt(mul(0.5, sub(1.0, div(bb, h2))))
            if a < 0.0:
                sphi = -sphi
            cphi = div(a, mul(mul(2.0, h2), sphi))
        kappa = div(sub(mul(sphi, cxr), mul(cphi, cyr)), crr)
        delta = sub(sub(mul(sphi, xm), mul(cphi, ym)), mul(kappa, rm))
        last = hits[n - 1]
        if add(mul(sub(x[last], x[hits[0]]), cphi), mul(sub(y[last], y[hits[0]]), sphi)) < 0.0:
            cphi, sphi, kappa, delta = -cphi, -sphi, -kappa, -delta  # the other direction
        disc = sub(1.0, mul(mul(4.0, delta), kappa))
        if not disc > 0.0:
            return -1.0
        root = sqrt(disc)
        rho = div(mul(2.0, kappa), root)
        d = div(mul(2.0, delta), add(1.0, root))  # PCA = d (sin phi, -cos phi)
        par[PAR_CURVATURE] = rho
        par[PAR_COS_PHI] = cphi
        par[PAR_SIN_PHI] = sphi
        par[PAR_D0] = -d
        return 0.0

    circle_fit = jit(circle_fit)

    def arc_length(xh, yh, px, py, rho):
        """Transverse arc length [cm] from the PCA ``(px, py)`` to a hit along a circle of
        curvature ``rho``: the chord ``L`` times the series of ``2 asin(u / 2) / u``, ``u =
        rho L``, to ``u**8`` (relative error below 2e-7 for ``|u| < 0.6``)."""
        dx, dy = sub(xh, px), sub(yh, py)
        chord = sqrt(add(mul(dx, dx), mul(dy, dy)))
        u2 = mul(mul(rho, chord), mul(rho, chord))
        series = mul(u2, div(35.0, 294912.0))
        series = mul(u2, add(div(5.0, 7168.0), series))
        series = mul(u2, add(div(3.0, 640.0), series))
        series = add(1.0, mul(u2, add(div(1.0, 24.0), series)))
        return mul(chord, series)

    arc_length = jit(arc_length)

    def cholesky(a, n):
        """In place: ``a[:n, :n]`` (symmetric, its lower triangle read) becomes its lower
        Cholesky factor ``L`` (``a = L L^T``); False when it is not positive definite."""
        for j in range(n):
            s = a[j, j]
            for k in range(j):
                s = sub(s, mul(a[j, k], a[j, k]))
            if not s > 0.0:
                return False
            d = sqrt(s)
            a[j, j] = d
            for i in range(j + 1, n):
                s = a[i, j]
                for k in range(j):
                    s = sub(s, mul(a[i, k], a[j, k]))
                a[i, j] = div(s, d)
        return True

    cholesky = jit(cholesky)

    def lower_solve(low, m, n, c):
        """In place: column ``c`` of ``m[:n]`` becomes ``L^-1`` times it (``L`` the lower
        triangle of ``low[:n, :n]``), by forward substitution."""
        for i in range(n):
            s = m[i, c]
            for j in range(i):
                s = sub(s, mul(low[i, j], m[j, c]))
            m[i, c] = div(s, low[i, i])

    lower_solve = jit(lower_solve)

    def gls(v, m, n, k, nrm, cov, dp):
        """Generalised least squares of the linear model ``r(p) = m[:n, k] + m[:n, :k] p``,
        ``r`` with covariance ``v[:n, :n]``: the ``p`` that minimises ``r^T v^-1 r`` into
        ``dp[:k]``, its covariance ``(m^T v^-1 m)^-1`` into ``cov[:k, :k]``; returns that
        minimum (the chi2), -1 when ``v`` or the normal matrix is not positive definite.
        Overwrites ``v`` (with its Cholesky factor ``L``), ``m`` (with ``L^-1 m``) and ``nrm``
        (``k x k`` scratch)."""
        if not cholesky(v, n):
            return -1.0
        for c in range(k + 1):  # whitened model: L^-1 r = L^-1 m[:, k] + (L^-1 m[:, :k]) p
            lower_solve(v, m, n, c)
        for a in range(k):  # normal matrix N = m^T m, right side -m^T r0 (into dp)
            for b in range(a + 1):
                s = 0.0
                for i in range(n):
                    s = add(s, mul(m[i, a], m[i, b]))
                nrm[a, b] = s
            s = 0.0
            for i in range(n):
                s = add(s, mul(m[i, a], m[i, k]))
            dp[a] = -s
        if not cholesky(nrm, k):  # N = G G^T
            return -1.0
        for j in range(k):  # cov[:, j] <- G^-1 e_j (lower triangular), then cov = G^-T G^-1
            for i in range(k):
                cov[i, j] = 1.0 if i == j else 0.0
        for j in range(k):
            lower_solve(nrm, cov, k, j)
        for a in range(k):  # (G^-1)^T G^-1: column a of G^-1 dotted with column b
            for b in range(a + 1):
                s = 0.0
                for i in range(k):
                    s = add(s, mul(cov[i, a], cov[i, b]))
                nrm[b, a] = s  # upper triangle: the lower one still holds G
        for a in range(k):
            for b in range(k):
                cov[a, b] = nrm[a, b] if a <= b else nrm[b, a]
        rhs0, rhs1, rhs2 = dp[0], dp[1] if k > 1 else 0.0, dp[2] if k > 2 else 0.0
        for a in range(k):
            s = mul(cov[a, 0], rhs0)
            if k > 1:
                s = add(s, mul(cov[a, 1], rhs1))
            if k > 2:
                s = add(s, mul(cov[a, 2], rhs2))
            dp[a] = s
        chi2 = 0.0
        for i in range(n):
            s = m[i, k]
            for a in range(k):
                s = add(s, mul(m[i, a], dp[a]))
            chi2 = add(chi2, mul(s, s))
        return chi2

    gls = jit(gls)

    def scattering(v, hits, n, layer, layer_flags, layer_ms, s, factor, cot):
        """Add to ``v[:n, :n]`` the multiple-scattering covariance of the hit residuals: a
        kink at every hit ``k`` but the last, of variance ``theta_k^2 = layer_ms[layer] *
        path / p^2``, moves hit ``i > k`` by ``theta (s_i - s_k)`` times the view's factor;
        ``factor`` is ``theta^2 (view factor)^2`` without the layer's ``layer_ms * path``,
        ``path`` the crossing's thickness over the normal one (``sqrt(1 + cot^2)`` in the
        barrel, ``sqrt(1 + cot^2) / |cot|`` on a disk)."""
        slope = sqrt(add(1.0, mul(cot, cot)))
        for k in range(n - 1):
            ms = layer_ms[layer[hits[k]]]
            if ms == 0.0:
                continue
            path = slope
            if not layer_flags[layer[hits[k]]] & FLAG_BARREL:  # a disk: crossed at theta
                path = div(slope, abs(cot))
            theta2 = mul(mul(ms, path), factor)
            for i in range(k + 1, n):
                for j in range(k + 1, i + 1):
                    term = mul(theta2, mul(sub(s[i], s[k]), sub(s[j], s[k])))
                    v[i, j] = add(v[i, j], term)

    scattering = jit(scattering)

    def fit(hits, n, x, y, z, layer, layer_flags, err_t, err_l, layer_ms, cuts, par, v, m,
            nrm, cov, dp, s):
        """Fit the n-tuplet ``hits[:n]`` into ``par`` (rule 3 of the stage) and apply the
        quality cuts: 1 when it passes, 0 when it fails them or the fit is degenerate.
        ``v`` (``MAX_HITS x MAX_HITS``), ``m`` (``MAX_HITS x 4``), ``nrm``, ``cov`` (3 x 3),
        ``dp`` (3) and ``s`` (``MAX_HITS``) are scratch."""
        if circle_fit(hits, n, x, y, par) < 0.0 or par[PAR_CURVATURE] == 0.0:
            return 0
        rho, cphi, sphi, d = par[PAR_CURVATURE], par[PAR_COS_PHI], par[PAR_SIN_PHI], -par[PAR_D0]
        # -- the prefit's arc lengths, cot(theta) from the first and last hit, the pT
        px, py = mul(d, sphi), -mul(d, cphi)  # PCA = d (sin phi, -cos phi)
        for i in range(n):
            h = hits[i]
            s[i] = arc_length(x[h], y[h], px, py, rho)
        if not s[n - 1] > s[0]:
            return 0
        cot0 = div(sub(z[hits[n - 1]], z[hits[0]]), sub(s[n - 1], s[0]))
        pt_inv = div(abs(rho), cuts[CUT_PT_PER_CURVATURE])  # 1 / pT of the prefit [1/GeV]
        pt_inv2 = mul(pt_inv, pt_inv)
        # -- r-phi: one Gauss-Newton step of the weighted circle fit from the prefit
        for i in range(n):
            h = hits[i]
            xi, yi = x[h], y[h]
            along = sub(mul(xi, sphi), mul(yi, cphi))  # x sin phi - y cos phi
            across = add(mul(xi, cphi), mul(yi, sphi))  # x cos phi + y sin phi
            r2 = add(mul(xi, xi), mul(yi, yi))
            one_rho_d = add(1.0, mul(rho, d))
            eps = add(sub(mul(mul(0.5, rho), r2), mul(one_rho_d, along)),
                      add(mul(mul(0.5, rho), mul(d, d)), d))
            arg = add(1.0, mul(mul(2.0, rho), eps))
            if not arg > 0.0:
                return 0
            root = sqrt(arg)
            dist = div(mul(2.0, eps), add(1.0, root))  # rho/2 dist^2 + dist = eps
            # d dist / d p = (d eps / d p - [p = rho] dist^2 / 2) / (1 + rho dist) = ... / root
            de_drho = add(sub(mul(0.5, r2), mul(d, along)), mul(0.5, mul(d, d)))
            m[i, 0] = div(sub(de_drho, mul(0.5, mul(dist, dist))), root)
            m[i, 1] = div(-mul(one_rho_d, across), root)
            m[i, 2] = div(add(1.0, sub(mul(rho, d), mul(rho, along))), root)
            m[i, 3] = dist
            for j in range(n):
                v[i, j] = 0.0
            v[i, i] = mul(err_t[h], err_t[h])
        scattering(v, hits, n, layer, layer_flags, layer_ms, s, pt_inv2, cot0)
        chi2_circle = gls(v, m, n, 3, nrm, cov, dp)
        if chi2_circle < 0.0 or not abs(dp[1]) < cuts[CUT_MAX_DPHI]:
            return 0
        rho = add(rho, dp[0])
        d = add(d, dp[2])
        if rho == 0.0:
            return 0
        # rotate (cos phi, sin phi) by dp[1]: sin and cos as their series to dphi^9, dphi^8
        a = dp[1]
        a2 = mul(a, a)
        sin_a = mul(a, sub(1.0, mul(div(a2, 6.0), sub(1.0, mul(div(a2, 20.0), sub(
            1.0, mul(div(a2, 42.0), sub(1.0, div(a2, 72.0)))))))))
        cos_a = sub(1.0, mul(div(a2, 2.0), sub(1.0, mul(div(a2, 12.0), sub(
            1.0, mul(div(a2, 30.0), sub(1.0, div(a2, 56.0))))))))
        cphi, sphi = sub(mul(cphi, cos_a), mul(sphi, sin_a)), add(mul(sphi, cos_a),
                                                                    mul(cphi, sin_a))
        k = cuts[CUT_PT_PER_CURVATURE]
        par[PAR_CURVATURE] = rho
        par[PAR_COS_PHI] = cphi
        par[PAR_SIN_PHI] = sphi
        par[PAR_D0] = -d
        # (q/pT, phi, d0) = (rho / k, phi, -d)
        par[PAR_COV_QPT_QPT] = div(div(cov[0, 0], k), k)
        par[PAR_COV_QPT_PHI] = div(cov[0, 1], k)
        par[PAR_COV_QPT_D0] = -div(cov[0, 2], k)
        par[PAR_COV_PHI_PHI] = cov[1, 1]
        par[PAR_COV_PHI_D0] = -cov[1, 2]
        par[PAR_COV_D0_D0] = cov[2, 2]
        # -- r-z: z = z0 + cot(theta) s along the fitted circle
        px, py = mul(d, sphi), -mul(d, cphi)
        for i in range(n):
            h = hits[i]
            s[i] = arc_length(x[h], y[h], px, py, rho)
        if not s[n - 1] > s[0]:
            return 0
        for i in range(n):
            h = hits[i]
            sigma = err_l[h]
            if not layer_flags[layer[h]] & FLAG_BARREL:  # a disk measures r: sigma_r |cot|
                sigma = mul(sigma, abs(cot0))
            m[i, 0] = 1.0
            m[i, 1] = s[i]
            m[i, 2] = -z[h]
            for j in range(n):
                v[i, j] = 0.0
            v[i, i] = mul(sigma, sigma)
        scattering(v, hits, n, layer, layer_flags, layer_ms, s,
                   mul(pt_inv2, add(1.0, mul(cot0, cot0))), cot0)
        chi2_line = gls(v, m, n, 2, nrm, cov, dp)
        if chi2_line < 0.0:
            return 0
        par[PAR_Z0] = dp[0]
        par[PAR_COT_THETA] = dp[1]
        par[PAR_COV_Z0_Z0] = cov[0, 0]
        par[PAR_COV_COT_Z0] = cov[0, 1]
        par[PAR_COV_COT_COT] = cov[1, 1]
        chi2 = add(chi2_circle, chi2_line)
        if not chi2 >= 0.0:  # NaN: a degenerate fit
            return 0
        par[PAR_CHI2] = chi2
        pt = div(k, abs(rho))
        par[PAR_PT] = pt
        if n == 3:
            tip, min_pt, zip_ = (cuts[CUT_TRIPLET_MAX_TIP], cuts[CUT_TRIPLET_MIN_PT],
                                 cuts[CUT_TRIPLET_MAX_ZIP])
        else:
            tip, min_pt, zip_ = (cuts[CUT_QUADRUPLET_MAX_TIP], cuts[CUT_QUADRUPLET_MIN_PT],
                                 cuts[CUT_QUADRUPLET_MAX_ZIP])
        if (abs(par[PAR_D0]) < tip and abs(par[PAR_Z0]) < zip_ and pt > min_pt
                and chi2 < cuts[CUT_MAX_CHI2]):
            return 1
        return 0

    fit = jit(fit)

    def clean(order, start, stop, tup_hits, tup_n, used, keep):
        """Walk candidates ``order[start:stop]`` (best first): keep each whose hits are all
        unused, and mark its hits used."""
        for i in range(start, stop):
            t = order[i]
            free = True
            for k in range(tup_n[t]):
                if used[tup_hits[t, k]]:
                    free = False
                    break
            if free:
                for k in range(tup_n[t]):
                    used[tup_hits[t, k]] = 1
                keep[t] = 1

    clean = jit(clean)
    return triplet_passes, neighbours, walk, fit, clean


#: Plain-Python versions (the reference's arithmetic): ``(triplet_passes, neighbours, walk, fit,
#: clean)``; the reference calls ``triplet_passes`` and ``fit``.
PY = _make(lambda f: f, *PY_OPS)
triplet_passes_py, _, _, fit_py, _ = PY

_triplet_cpu, _neighbours_cpu, _walk_cpu, _fit_cpu, _clean_cpu = _make(
    numba.njit(cache=True), *CPU_OPS)
_triplet_cuda, _neighbours_cuda, _walk_cuda, _fit_cuda, _clean_cuda = _make(
    cuda.jit(device=True), *CUDA_OPS)


# -- cpu kernels (prange over cells, candidates or events) -------------------------------------
@numba.njit(parallel=True, nogil=True, cache=True)
def neighbours_cpu(cell_inner, cell_outer, hit_cells, x, y, z, r, layer, layer_flags, cuts,
                   nb_offsets, nb, write, counts):
    """Every cell: count its outer neighbours into ``counts``; with ``write`` (``nb_offsets``
    the prefix sum of the counts) store them in ``nb``."""
    for c in numba.prange(cell_inner.shape[0]):
        counts[c] = _neighbours_cpu(c, cell_inner, cell_outer, hit_cells, x, y, z, r, layer,
                                    layer_flags, cuts, nb, nb_offsets[c], write)


@numba.njit(parallel=True, nogil=True, cache=True)
def ntuplets_cpu(cell_inner, cell_outer, layer, layer_flags, nb_offsets, nb, min_hits,
                 tup_offsets, tup_hits, tup_n, write, counts):
    """Every start cell: count its n-tuplets into ``counts``; with ``write`` (``tup_offsets``
    the prefix sum of the counts) store them."""
    for c in numba.prange(cell_inner.shape[0]):
        counts[c] = 0
        if layer_flags[layer[cell_inner[c]]] & FLAG_START:
            stack_cell = np.empty(MAX_CELLS, dtype=np.int64)
            stack_k = np.empty(MAX_CELLS, dtype=np.int64)
            counts[c] = _walk_cpu(c, cell_inner, cell_outer, nb_offsets, nb, min_hits,
                                  stack_cell, stack_k, tup_hits, tup_n, tup_offsets[c], write)


@numba.njit(parallel=True, nogil=True, cache=True)
def fit_cpu(tup_hits, tup_n, x, y, z, layer, layer_flags, err_t, err_l, layer_ms, cuts, par,
            good):
    """Every candidate: its fit into ``par[t]`` and its quality flag ``good[t]``."""
    for t in numba.prange(tup_n.shape[0]):
        v = np.empty((MAX_HITS, MAX_HITS), dtype=np.float64)
        m = np.empty((MAX_HITS, 4), dtype=np.float64)
        nrm = np.empty((3, 3), dtype=np.float64)
        cov = np.empty((3, 3), dtype=np.float64)
        dp = np.empty(3, dtype=np.float64)
        s = np.empty(MAX_HITS, dtype=np.float64)
        good[t] = _fit_cpu(tup_hits[t], tup_n[t], x, y, z, layer, layer_flags, err_t, err_l,
                           layer_ms, cuts, par[t], v, m, nrm, cov, dp, s)


@numba.njit(parallel=True, nogil=True, cache=True)
def clean_cpu(order, order_offsets, tup_hits, tup_n, used, keep):
    """Every event ``e``: the shared-hit cleaning of its good candidates, which
    ``order[order_offsets[e]:order_offsets[e + 1]]`` lists best first."""
    for e in numba.prange(order_offsets.shape[0] - 1):
        _clean_cpu(order, order_offsets[e], order_offsets[e + 1], tup_hits, tup_n, used, keep)


# -- cuda kernels (one thread per cell, candidate or event) ------------------------------------
@cuda.jit(cache=True)
def neighbours_cuda(cell_inner, cell_outer, hit_cells, x, y, z, r, layer, layer_flags, cuts,
                    nb_offsets, nb, write, counts):
    """One thread per cell: :func:`neighbours_cpu`'s loop body."""
    c = cuda.grid(1)
    if c < cell_inner.shape[0]:
        counts[c] = _neighbours_cuda(c, cell_inner, cell_outer, hit_cells, x, y, z, r, layer,
                                     layer_flags, cuts, nb, nb_offsets[c], write)


@cuda.jit(cache=True)
def ntuplets_cuda(cell_inner, cell_outer, layer, layer_flags, nb_offsets, nb, min_hits,
                  tup_offsets, tup_hits, tup_n, write, counts):
    """One thread per cell: :func:`ntuplets_cpu`'s loop body."""
    c = cuda.grid(1)
    if c < cell_inner.shape[0]:
        counts[c] = 0
        if layer_flags[layer[cell_inner[c]]] & FLAG_START:
            stack_cell = cuda.local.array(MAX_CELLS, numba.int64)
            stack_k = cuda.local.array(MAX_CELLS, numba.int64)
            counts[c] = _walk_cuda(c, cell_inner, cell_outer, nb_offsets, nb, min_hits,
                                   stack_cell, stack_k, tup_hits, tup_n, tup_offsets[c], write)


@cuda.jit(cache=True)
def fit_cuda(tup_hits, tup_n, x, y, z, layer, layer_flags, err_t, err_l, layer_ms, cuts, par,
             good):
    """One thread per candidate: :func:`fit_cpu`'s loop body."""
    t = cuda.grid(1)
    if t < tup_n.shape[0]:
        v = cuda.local.array((MAX_HITS, MAX_HITS), numba.float64)
        m = cuda.local.array((MAX_HITS, 4), numba.float64)
        nrm = cuda.local.array((3, 3), numba.float64)
        cov = cuda.local.array((3, 3), numba.float64)
        dp = cuda.local.array(3, numba.float64)
        s = cuda.local.array(MAX_HITS, numba.float64)
        good[t] = _fit_cuda(tup_hits[t], tup_n[t], x, y, z, layer, layer_flags, err_t, err_l,
                            layer_ms, cuts, par[t], v, m, nrm, cov, dp, s)


@cuda.jit(cache=True)
def clean_cuda(order, order_offsets, tup_hits, tup_n, used, keep):
    """One thread per event: :func:`clean_cpu`'s loop body."""
    e = cuda.grid(1)
    if e < order_offsets.shape[0] - 1:
        _clean_cuda(order, order_offsets[e], order_offsets[e + 1], tup_hits, tup_n, used, keep)
