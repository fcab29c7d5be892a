"""Plots to check a generated file by eye (hist + mplhep; ``pip install 'hltemu[plots]'``).

:func:`make_plots` reads a file written by ``hltemu generate`` and draws, one PNG each:

* ``pixel_rz.png``: pixel hits in r-z (the 4 barrel layers and 3 disks per side);
* ``pixel_xy.png``: barrel hits in x-y;
* ``pixel_hits_per_layer.png``: hits per event and layer, particle hits and noise hits;
* ``pixel_cluster_size.png``: barrel cluster size along z versus |eta| of the hit (grows
  like the crossing angle's cotangent) and size along r-phi;
* ``pixel_pads.png``: a few charge pads;
* ``calo_cell_energy.png``: cell energies per section, measured and true;
* ``calo_noise.png``: energy / sigma of cells without deposit (a unit Gaussian if the noise
  model is right) and the noise sigma per cell versus eta;
* ``calo_eta_phi.png``: measured transverse energy of the first event in eta-phi;
* ``genpart.png``: charged final-state particles in eta, hard scatter and pileup.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class PlotError(RuntimeError):
    """The plots cannot be made (missing packages, unreadable file)."""


def _imports():
    try:
        import hist
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import mplhep
    except ImportError as exc:
        raise PlotError(
            f"plots need hist, mplhep and matplotlib ({exc}); pip install 'hltemu[plots]'"
        ) from None
    return hist, plt, mplhep


def make_plots(path: str | Path, outdir: str | Path, geometry=None) -> list[Path]:
    """Draw the check plots of the generated file ``path`` into ``outdir``; return the files."""
    hist, plt, mplhep = _imports()
    from hltemu.geometry import default_geometry
    from hltemu.io import read_collections

    geom = geometry or default_geometry()
    try:
        colls = read_collections(str(path), ["Event", "GenPart", "PixelHit", "CaloCell"])
    except Exception as exc:
        raise PlotError(f"cannot read {path}: {exc}") from None
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    mplhep.style.use("CMS")
    hits, cells, gen = colls["PixelHit"], colls["CaloCell"], colls["GenPart"]
    n_events = hits.n_events
    label = f"{n_events} events"
    written: list[Path] = []

    def save(fig, name: str, exp_label: bool = True) -> None:
        if exp_label:
            mplhep.label.exp_label(exp="hltemu", llabel="toy simulation", rlabel=label,
                                   ax=fig.axes[0])
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)

    x, y, z = (np.asarray(hits[c], dtype=np.float64) for c in ("x", "y", "z"))
    r = np.hypot(x, y)
    layer = np.asarray(hits["layer"])
    noise = np.asarray(hits["sim_index"]) < 0

    h = hist.Hist.new.Reg(600, -60, 60, name="z", label="z [cm]").Reg(
        200, 0, 20, name="r", label="r [cm]").Double()
    h.fill(z=z, r=r)
    fig, ax = plt.subplots(figsize=(14, 6))
    mplhep.hist2dplot(h, ax=ax, norm=_lognorm())
    save(fig, "pixel_rz.png")

    barrel = layer < len(geom.pixel.barrel)
    h = hist.Hist.new.Reg(400, -20, 20, name="x", label="x [cm]").Reg(
        400, -20, 20, name="y", label="y [cm]").Double()
    h.fill(x=x[barrel], y=y[barrel])
    fig, ax = plt.subplots(figsize=(10, 9))
    mplhep.hist2dplot(h, ax=ax, norm=_lognorm())
    save(fig, "pixel_xy.png")

    n_lay = geom.pixel.n_layers
    h = hist.Hist.new.Integer(0, n_lay, name="layer", label="pixel layer id (0-3 BPix, "
                              "4-6 FPix+, 7-9 FPix-)").StrCat(["particle", "noise"],
                                                              name="kind").Weight()
    h.fill(layer=layer[~noise], kind="particle", weight=1.0 / n_events)
    h.fill(layer=layer[noise], kind="noise", weight=1.0 / n_events)
    fig, ax = plt.subplots()
    mplhep.histplot([h[:, "particle"], h[:, "noise"]], ax=ax, stack=True, histtype="fill",
                    label=["particle hits", "noise hits"])
    ax.set_ylabel("hits per event")
    ax.legend()
    save(fig, "pixel_hits_per_layer.png")

    eta_hit = np.arcsinh(z / r)
    h = hist.Hist.new.Reg(25, 0, 2.5, name="eta", label="|eta| of the barrel hit").Integer(
        1, 17, name="sy", label="cluster size along z [pixels]").Double()
    h.fill(eta=np.abs(eta_hit[barrel & ~noise]), sy=np.asarray(hits["size_y"])[barrel & ~noise])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(18, 7))
    mplhep.hist2dplot(h, ax=ax1, norm=_lognorm())
    hx = hist.Hist.new.Integer(1, 12, name="sx", label="cluster size along r-phi [pixels]"
                               ).StrCat(["barrel", "disks"], name="part").Double()
    hx.fill(sx=np.asarray(hits["size_x"])[barrel & ~noise], part="barrel")
    hx.fill(sx=np.asarray(hits["size_x"])[~barrel & ~noise], part="disks")
    mplhep.histplot([hx[:, "barrel"], hx[:, "disks"]], ax=ax2, density=True,
                    label=["barrel", "disks"])
    ax2.legend()
    save(fig, "pixel_cluster_size.png")

    pads = np.asarray(hits["pad"])
    fig, axes = plt.subplots(2, 4, figsize=(16, 8))
    for k, ax in enumerate(axes.flat):
        i = min(k * max(1, len(pads) // 8), len(pads) - 1)
        im = ax.imshow(pads[i].T, origin="lower", cmap="viridis")
        ax.set_title(f"layer {layer[i]}, {hits['size_x'][i]}x{hits['size_y'][i]}", fontsize=14)
        ax.set_xlabel("local x [pixel]", fontsize=12)
        ax.set_ylabel("local y [pixel]", fontsize=12)
        fig.colorbar(im, ax=ax).set_label("electrons", fontsize=12)
    fig.suptitle("hltemu toy simulation: pixel charge pads (8 x 8)", fontsize=18)
    fig.tight_layout()
    save(fig, "pixel_pads.png", exp_label=False)

    cid = np.asarray(cells["id"])
    energy = np.asarray(cells["energy"], dtype=np.float64)
    true_e = np.asarray(cells["true_energy"], dtype=np.float64)
    sigma = geom.calo.noise_sigma[cid].astype(np.float64)
    section = np.array([lay.section for lay in geom.calo.layers])[geom.calo.cell_layer[cid]]
    h = hist.Hist.new.Reg(120, -1, 5, name="e", label="cell energy [GeV]").StrCat(
        ["ECAL measured", "ECAL true", "HCAL measured", "HCAL true"], name="k").Double()
    for sec in ("ECAL", "HCAL"):
        m = section == sec
        h.fill(e=energy[m], k=f"{sec} measured")
        h.fill(e=true_e[m & (true_e > 0)], k=f"{sec} true")
    fig, ax = plt.subplots()
    mplhep.histplot([h[:, k] for k in range(4)], ax=ax,
                    label=["ECAL measured", "ECAL true (> 0)", "HCAL measured", "HCAL true (> 0)"])
    ax.set_yscale("log")
    ax.legend()
    save(fig, "calo_cell_energy.png")

    empty = true_e == 0
    h = hist.Hist.new.Reg(100, -6, 6, name="s", label="energy / noise sigma, cells without "
                          "deposit").Double()
    h.fill(s=energy[empty] / sigma[empty])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(18, 7))
    mplhep.histplot(h, ax=ax1, label="cells")
    centres = h.axes[0].centers
    width = h.axes[0].widths[0]
    ax1.plot(centres, empty.sum() * width * np.exp(-0.5 * centres**2) / np.sqrt(2 * np.pi),
             label="unit Gaussian")
    ax1.set_yscale("log")
    ax1.set_ylim(bottom=0.5)
    ax1.legend()
    hs = hist.Hist.new.Reg(60, -3, 3, name="eta", label="cell eta").StrCat(
        [lay.name for lay in geom.calo.layers], name="layer").Mean()
    for lay in geom.calo.layers:
        sl = slice(geom.calo.layer_offset[lay.index], geom.calo.layer_offset[lay.index + 1])
        hs.fill(eta=geom.calo.cell_eta[sl], layer=lay.name,
                sample=1000.0 * geom.calo.noise_sigma[sl])
    mplhep.histplot([hs[:, lay.name] for lay in geom.calo.layers], ax=ax2,
                    label=[lay.name for lay in geom.calo.layers])
    ax2.set_ylabel("mean noise sigma per cell [MeV]")
    ax2.legend()
    save(fig, "calo_noise.png")

    first = cells.event(0)
    e0 = np.asarray(first["energy"], dtype=np.float64)
    ids0 = np.asarray(first["id"])
    h = hist.Hist.new.Reg(60, -3, 3, name="eta", label="eta").Reg(
        64, -np.pi, np.pi, name="phi", label="phi").Double()
    eta0 = geom.calo.cell_eta[ids0]
    h.fill(eta=eta0, phi=geom.calo.cell_phi[ids0], weight=e0 / np.cosh(eta0))
    fig, ax = plt.subplots(figsize=(14, 8))
    from matplotlib.colors import LogNorm

    mplhep.hist2dplot(h, ax=ax, norm=LogNorm(vmin=0.2), cbarextend=True)
    ax.collections[0].colorbar.set_label("event 0: measured E_T per 0.1 x 0.1, all layers [GeV]")
    save(fig, "calo_eta_phi.png")

    final_charged = (np.asarray(gen["status"]) == 1) & (np.asarray(gen["charge"]) != 0)
    vertex = np.asarray(gen["vertex"])
    h = hist.Hist.new.Reg(50, -5, 5, name="eta", label="eta of charged final-state particles"
                          ).StrCat(["hard scatter", "pileup"], name="src").Weight()
    eta_g = np.asarray(gen["eta"])
    h.fill(eta=eta_g[final_charged & (vertex == 0)], src="hard scatter", weight=1.0 / n_events)
    h.fill(eta=eta_g[final_charged & (vertex > 0)], src="pileup", weight=1.0 / n_events)
    fig, ax = plt.subplots()
    mplhep.histplot([h[:, "hard scatter"], h[:, "pileup"]], ax=ax,
                    label=["hard scatter", "pileup"])
    ax.set_ylabel("particles per event and bin")
    ax.legend()
    save(fig, "genpart.png")
    return written


def _lognorm():
    from matplotlib.colors import LogNorm

    return LogNorm()
