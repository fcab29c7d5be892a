"""The real-data yardstick of a jet-energy regression: CMS's ParticleNet pT regression against
CMS's factorized JEC, both measured against GenJets on real CMS Run-3 NanoAOD (issue 20).

Usage::

    python examples/nanoaod_regression_yardstick.py [FILE.root] [--json PATH] [--bootstrap N]

``FILE`` defaults to ``tests/data/nanoAOD_v15_Run3_ttbar_TrigObj.root`` (CMS Run-3 NanoAOD v15,
ttbar simulation, 200 events; ``/work/shared/data/cms-open-data/README.md``).  Three pT's of
each offline AK4 PUPPI jet (``Jet``) are compared with the pT of its GenJet:

* ``jec``: ``Jet_pt``, the factorized JEC CMS applied when writing the file;
* ``pnet``: ``pt_raw * Jet_PNetRegPtRawCorr`` with ``pt_raw = Jet_pt * (1 - Jet_rawFactor)``:
  ParticleNet's regression of the visible pT (no neutrinos), as stored, nothing on top;
* ``pnet_nu`` (when ``Jet_PNetRegPtRawCorrNeutrino`` exists): ``pt_raw * Jet_PNetRegPtRawCorr
  * Jet_PNetRegPtRawCorrNeutrino``, the full regression including neutrinos (NanoAOD's
  documentation of the branch: "to apply full regression, multiply raw jet pT by both").
  NanoAOD's GenJets are built without neutrinos, so its median response lies above 1 by design
  (semileptonic b and c decays); it is a yardstick of what the neutrino term does, not a
  closure.

Matching.  Each reco jet takes the GenJet ``Jet_genJetIdx`` names (CMS's own matching, made
in MiniAOD), and the pair is kept only if it is also within Delta R < 0.2 (eta, phi) and the
GenJet has |eta| < 2.5.  The Delta R check drops the few pairs CMS matched at 0.2-0.4 (29 of
1,345 in this file, mostly at GenJet pT < 50 GeV).  Without ``Jet_genJetIdx`` (or with
``--matching deltar``) the pairs come from a one-to-one, closest-first Delta R < 0.2 matching
(:func:`hltemu.jetmatch.match_jets`).  There is no cut on the reco jet beyond NanoAOD's own
(stored jets have ``Jet_pt`` > 15 GeV), so below ~30 GeV of GenJet pT the response is biased
upwards by that threshold; the lowest bin starts at 30 GeV.

Per GenJet-pT bin [GeV]: the jets, the median response (reco/gen) and the resolution, the half
16-84% width of the response over its median.  Quantiles are numpy's ``'hazen'`` (what
:func:`hltemu.jetmatch.weighted_quantile` gives with unit weights; ``--quantiles``).  Errors
are the standard deviations over bootstrap resamples of the jets (seeded; the same resamples
for every column, so ``resolution_gain``, the factorized resolution minus the regression's, has
its own paired error).

Issue 20 quotes 0.142 -> 0.108 (50-100 GeV) and 0.117 -> 0.087 (100-300 GeV) for ``jec`` ->
``pnet``.  With the defaults this script measures 0.142 -> 0.107 on 421 jets and 0.117 ->
0.088 on 177 jets (bootstrap errors 0.005-0.010).  The issue's four numbers are reproduced to
the digit by ``Jet_genJetIdx`` alone, without the Delta R check (424 jets at 50-100 GeV), and
numpy's default ``'linear'`` quantiles: ``--max-dr 1e9 --quantiles linear`` gives 0.1425 ->
0.1075 and 0.1167 -> 0.0873.  The three extra jets (CMS matched them at Delta R 0.2-0.4) and
the interpolation move the third decimal; the gain of the regression, 0.029-0.035 in
resolution (2.6-4.1 times the paired bootstrap error), does not depend on either.

What CMS applies on top of the regression (not applied here).  The JME group's recipe for
Run-3 AK4 PUPPI jets with the PNet regression (``cms-jet/JECDatabase`` pull request 189, July
2024: jet types ``AK4PFPuppiPNetRegression`` and ``AK4PFPuppiPNetRegressionPlusNeutrino`` for
the Summer22/22EE/23/23BPix campaigns; the calibration is CMS-DP-2024-064): take ``pt_raw *
PNetRegPtRawCorr`` (times ``PNetRegPtRawCorrNeutrino`` for the PlusNeutrino variant, which
analyses use for b-tagged jets) as the new "raw" pT, apply a dedicated MC-truth
``L2Relative`` derived for the regressed jets and, in data only, the ``L2L3Residual`` (copied
from AK4PFPuppi); JER smearing in simulation as usual.  Sources read: that pull request, and
columnflow pull request 804 and PocketCoffea pull requests 556/570, which implement it after
https://cms-jerc.web.cern.ch/JES/ (that page itself was not read; PocketCoffea's notes
recommend PNet for 2022/2023 and the UParTAK4 regression, also in this file, for 2024/2025).
Those correction files are not in this repository, so ``pnet`` is the regression without its
L2Relative: its median response here is 0.99-1.00 at 30-300 GeV, so that smooth correction
would move the medians by about 1% and the resolutions much less.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The real CMS Run-3 NanoAOD file (also /work/shared/data/cms-open-data/).
DEFAULT_FILE = REPO / "tests" / "data" / "nanoAOD_v15_Run3_ttbar_TrigObj.root"
DEFAULT_JSON = REPO / "benchmarks" / "jetreg" / "nanoaod_yardstick.json"
TREE = "Events"

#: Branches the yardstick cannot do without.
REQUIRED: tuple[str, ...] = ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_rawFactor",
                             "Jet_PNetRegPtRawCorr", "GenJet_pt", "GenJet_eta", "GenJet_phi")
#: Read when present: CMS's reco-to-GenJet index, the neutrino part of the regression.
OPTIONAL: tuple[str, ...] = ("Jet_genJetIdx", "Jet_PNetRegPtRawCorrNeutrino")

#: GenJet-pT bins [GeV].
DEFAULT_BINS: tuple[tuple[float, float], ...] = ((30.0, 50.0), (50.0, 100.0), (100.0, 300.0))
#: The columns, in table order: name -> what the reco pT is.
COLUMNS: dict[str, str] = {
    "jec": "Jet_pt (factorized JEC)",
    "pnet": "raw x PNetRegPtRawCorr",
    "pnet_nu": "raw x PNetRegPtRawCorr x PNetRegPtRawCorrNeutrino",
}
MAX_DR = 0.2
MAX_GEN_ABS_ETA = 2.5
N_BOOTSTRAP = 1000
SEED = 20
#: numpy's quantile interpolation (``'hazen'``: what :func:`hltemu.jetmatch.weighted_quantile`
#: gives with unit weights).
QUANTILES = "hazen"
#: What issue 20 quotes for the resolution, jec -> pnet, per GenJet-pT bin.
ISSUE_20 = {"50-100": {"jec": 0.142, "pnet": 0.108}, "100-300": {"jec": 0.117, "pnet": 0.087}}


class YardstickError(ValueError):
    """An input the yardstick cannot use; the message names the file and the branch."""


class NanoJets(NamedTuple):
    """Flat jets of a NanoAOD file.  ``*_ev``: event row of each jet; pT in GeV, phi in rad;
    ``pnet_corr``/``pnet_nu_corr``: dimensionless factors (``pnet_nu_corr`` None when absent);
    ``gen_idx``: ``Jet_genJetIdx`` (index into the event's GenJets, -1 none), None when absent."""

    path: str
    n_events: int
    jet_ev: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    raw_factor: np.ndarray
    pnet_corr: np.ndarray
    pnet_nu_corr: np.ndarray | None
    gen_idx: np.ndarray | None
    gen_ev: np.ndarray
    gen_offsets: np.ndarray
    gen_pt: np.ndarray
    gen_eta: np.ndarray
    gen_phi: np.ndarray

    @property
    def pt_raw(self) -> np.ndarray:
        """``Jet_pt * (1 - Jet_rawFactor)`` [GeV]: the jet before any correction."""
        return self.pt * (1.0 - self.raw_factor)


class Matched(NamedTuple):
    """Reco-GenJet pairs: ``jet``/``gen`` flat indices into :class:`NanoJets`' arrays;
    ``method`` (``genjetidx+deltar`` or ``deltar``); ``dropped_by_dr``: pairs of
    ``Jet_genJetIdx`` with Delta R >= max_dr (0 for ``deltar``)."""

    jet: np.ndarray
    gen: np.ndarray
    method: str
    dropped_by_dr: int


def read_nanoaod(path: str | Path) -> NanoJets:
    """Read the jets, GenJets and regression factors of NanoAOD ``path``.

    :class:`YardstickError` naming the file for a missing file or ``Events`` tree, the
    branch(es) of :data:`REQUIRED` it lacks, or a branch whose counts differ from its
    collection's.
    """
    import awkward as ak
    import uproot

    path = str(path)
    if not Path(path).is_file():
        raise YardstickError(f"{path}: no such file")
    try:
        f = uproot.open(path)
    except Exception as exc:  # uproot's errors name no file
        raise YardstickError(f"{path}: not readable as ROOT ({exc})") from None
    with f:
        if TREE not in f:
            raise YardstickError(f"{path} has no {TREE!r} tree: not NanoAOD "
                                 f"(objects: {', '.join(sorted(f.keys(cycle=False)))})")
        tree = f[TREE]
        names = set(tree.keys())
        missing = [b for b in REQUIRED if b not in names]
        if missing:
            raise YardstickError(f"{path} lacks the branch(es) {', '.join(missing)}; the "
                                 f"yardstick needs {', '.join(REQUIRED)}")
        wanted = list(REQUIRED) + [b for b in OPTIONAL if b in names]
        arrays = tree.arrays(wanted, library="ak")
    flat: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for b in wanted:
        coll = b.split("_", 1)[0]
        c = np.asarray(ak.num(arrays[b], axis=1), dtype=np.int64)
        if coll in counts and not np.array_equal(c, counts[coll]):
            raise YardstickError(f"{path}: branch {b!r} has other per-event counts than "
                                 f"{coll}_pt (a broken {coll} collection)")
        counts[coll] = c
        flat[b] = np.asarray(ak.to_numpy(ak.flatten(arrays[b], axis=1)))
    n_events = len(arrays)
    gen_offsets = np.concatenate([[0], np.cumsum(counts["GenJet"])]).astype(np.int64)

    def f64(b: str) -> np.ndarray:
        return flat[b].astype(np.float64)

    return NanoJets(
        path=path, n_events=n_events,
        jet_ev=np.repeat(np.arange(n_events), counts["Jet"]),
        pt=f64("Jet_pt"), eta=f64("Jet_eta"), phi=f64("Jet_phi"),
        raw_factor=f64("Jet_rawFactor"), pnet_corr=f64("Jet_PNetRegPtRawCorr"),
        pnet_nu_corr=(f64("Jet_PNetRegPtRawCorrNeutrino")
                      if "Jet_PNetRegPtRawCorrNeutrino" in flat else None),
        gen_idx=(flat["Jet_genJetIdx"].astype(np.int64) if "Jet_genJetIdx" in flat else None),
        gen_ev=np.repeat(np.arange(n_events), counts["GenJet"]), gen_offsets=gen_offsets,
        gen_pt=f64("GenJet_pt"), gen_eta=f64("GenJet_eta"), gen_phi=f64("GenJet_phi"))


def match_to_genjets(jets: NanoJets, max_dr: float = MAX_DR,
                     max_gen_abs_eta: float = MAX_GEN_ABS_ETA, method: str = "auto"
                     ) -> Matched:
    """Reco-GenJet pairs with Delta R < ``max_dr`` and GenJet |eta| < ``max_gen_abs_eta``.

    ``method``: ``genjetidx`` (CMS's ``Jet_genJetIdx``, each pair also checked for Delta R <
    ``max_dr``; :class:`YardstickError` naming the file when the branch is absent or an index
    points past the event's GenJets), ``deltar`` (one-to-one, closest first:
    :func:`hltemu.jetmatch.match_jets`) or ``auto`` (``genjetidx`` when the branch exists).
    """
    from hltemu.jetmatch import delta_phi, match_jets

    if method not in ("auto", "genjetidx", "deltar"):
        raise YardstickError(f"matching {method!r}: expected auto, genjetidx or deltar")
    if method == "genjetidx" and jets.gen_idx is None:
        raise YardstickError(f"{jets.path} lacks the branch Jet_genJetIdx (matching "
                             "'genjetidx'); use --matching deltar")
    dropped = 0
    if method != "deltar" and jets.gen_idx is not None:
        n_gen = np.diff(jets.gen_offsets)[jets.jet_ev]
        bad = jets.gen_idx >= n_gen
        if np.any(bad):
            raise YardstickError(f"{jets.path}: branch Jet_genJetIdx has {int(bad.sum())} "
                                 "index(es) past the event's GenJets")
        ij = np.nonzero(jets.gen_idx >= 0)[0]
        ig = jets.gen_offsets[jets.jet_ev[ij]] + jets.gen_idx[ij]
        dr = np.hypot(jets.eta[ij] - jets.gen_eta[ig], delta_phi(jets.phi[ij],
                                                                 jets.gen_phi[ig]))
        close = dr < max_dr
        dropped = int((~close).sum())
        ij, ig, name = ij[close], ig[close], "genjetidx+deltar"
    else:
        ij, ig = match_jets(jets.jet_ev, jets.eta, jets.phi, jets.gen_ev, jets.gen_eta,
                            jets.gen_phi, max_dr, jets.n_events)
        name = "deltar"
    central = np.abs(jets.gen_eta[ig]) < max_gen_abs_eta
    return Matched(ij[central], ig[central], name, dropped)


def responses(jets: NanoJets, m: Matched) -> dict[str, np.ndarray]:
    """Reco pT / GenJet pT of each matched pair, per column of :data:`COLUMNS` (``pnet_nu``
    only when the file has the neutrino factor)."""
    gen = jets.gen_pt[m.gen]
    raw = jets.pt_raw[m.jet]
    out = {"jec": jets.pt[m.jet] / gen, "pnet": raw * jets.pnet_corr[m.jet] / gen}
    if jets.pnet_nu_corr is not None:
        out["pnet_nu"] = raw * jets.pnet_corr[m.jet] * jets.pnet_nu_corr[m.jet] / gen
    return out


def median_and_resolution(r: np.ndarray, axis: int = -1, method: str = QUANTILES
                          ) -> tuple[Any, Any]:
    """Median of the response ``r`` and the resolution, half the 16-84% width over the median
    (both dimensionless), along ``axis``; ``method``: numpy's quantile interpolation."""
    q16, q50, q84 = np.quantile(np.asarray(r, dtype=np.float64), [0.16, 0.5, 0.84], axis=axis,
                                method=method)
    return q50, 0.5 * (q84 - q16) / q50


def bootstrap(columns: dict[str, np.ndarray], n_boot: int = N_BOOTSTRAP, seed: int = SEED,
              gain: tuple[str, str] = ("jec", "pnet"), method: str = QUANTILES
              ) -> dict[str, dict[str, float]]:
    """Median and resolution of each column (equal-length response arrays of the same jets)
    with bootstrap errors: the standard deviation over ``n_boot`` resamples of the jets
    (``numpy.random.default_rng(seed)``), the same resamples for every column.  Also
    ``resolution_gain``: resolution of ``gain[0]`` minus that of ``gain[1]``, with the error of
    the paired difference.  NaN for what cannot be computed (no jets; errors of < 2 jets)."""
    nan = float("nan")
    n = len(next(iter(columns.values()))) if columns else 0
    idx = (np.random.default_rng(seed).integers(0, n, (n_boot, n))
           if n > 1 and n_boot > 1 else None)
    out: dict[str, dict[str, float]] = {}
    boot: dict[str, np.ndarray] = {}
    for name, r in columns.items():
        r = np.asarray(r, dtype=np.float64)
        med, res = median_and_resolution(r, method=method) if n else (nan, nan)
        out[name] = {"median": float(med), "median_error": nan, "resolution": float(res),
                     "resolution_error": nan}
        if idx is not None:
            bm, boot[name] = median_and_resolution(r[idx], axis=1, method=method)
            out[name].update(median_error=float(np.std(bm)),
                             resolution_error=float(np.std(boot[name])))
    a, b = gain
    if a in out and b in out:
        out["resolution_gain"] = {
            "value": out[a]["resolution"] - out[b]["resolution"],
            "error": float(np.std(boot[a] - boot[b])) if a in boot and b in boot else nan}
    return out


def yardstick(path: str | Path = DEFAULT_FILE,
              bins: tuple[tuple[float, float], ...] = DEFAULT_BINS, n_boot: int = N_BOOTSTRAP,
              seed: int = SEED, max_dr: float = MAX_DR,
              max_gen_abs_eta: float = MAX_GEN_ABS_ETA, matching: str = "auto",
              quantiles: str = QUANTILES) -> dict[str, Any]:
    """The whole measurement as a JSON-ready dict: settings, matching counts and per GenJet-pT
    bin (``"lo-hi"`` [GeV]) the jets and, per column, median and resolution with bootstrap
    errors (:func:`bootstrap`), plus ``resolution_gain`` (jec minus pnet, paired error)."""
    jets = read_nanoaod(path)
    m = match_to_genjets(jets, max_dr, max_gen_abs_eta, matching)
    r = responses(jets, m)
    gen_pt = jets.gen_pt[m.gen]
    result: dict[str, Any] = {
        "file": str(path), "events": jets.n_events, "reco_jets": int(jets.pt.size),
        "matching": {"method": m.method, "max_dr": max_dr, "max_gen_abs_eta": max_gen_abs_eta,
                     "pairs": int(m.jet.size), "genjetidx_pairs_dropped_by_dr": m.dropped_by_dr},
        "columns": {k: COLUMNS[k] for k in r},
        "quantiles": f"numpy {quantiles!r}; resolution = (q84 - q16) / 2 / median",
        "bootstrap": {"resamples": n_boot, "seed": seed},
        "bins": {},
        "issue_20": ISSUE_20,
    }
    for lo, hi in bins:
        sel = (gen_pt >= lo) & (gen_pt < hi)
        result["bins"][f"{lo:g}-{hi:g}"] = {
            "jets": int(sel.sum()),
            **bootstrap({k: v[sel] for k, v in r.items()}, n_boot, seed, method=quantiles)}
    return result


def _pm(value: float, error: float) -> str:
    return f"{value:.3f}" if np.isnan(error) else f"{value:.3f} ± {error:.3f}"


def markdown_table(result: dict[str, Any]) -> str:
    """The result as a markdown table: one row per GenJet-pT bin, median and resolution per
    column, and the jec - pnet resolution gain."""
    cols = list(result["columns"])
    head = ["GenJet pT [GeV]", "jets"]
    for c in cols:
        head += [f"{c} median", f"{c} resolution"]
    head.append("gain jec-pnet")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, b in result["bins"].items():
        cells = [name, str(b["jets"])]
        for c in cols:
            cells += [_pm(b[c]["median"], b[c]["median_error"]),
                      _pm(b[c]["resolution"], b[c]["resolution_error"])]
        g = b["resolution_gain"]
        cells.append(_pm(g["value"], g["error"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bins(text: str) -> tuple[tuple[float, float], ...]:
    edges = [float(x) for x in text.split(",")]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
        raise argparse.ArgumentTypeError(f"--bins {text!r}: at least two increasing edges "
                                         "in GeV, e.g. 30,50,100,300")
    return tuple(zip(edges[:-1], edges[1:], strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", nargs="?", default=str(DEFAULT_FILE), help="CMS NanoAOD file")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="output JSON (default %(default)s)")
    ap.add_argument("--bins", type=_bins, default=DEFAULT_BINS,
                    help="GenJet-pT bin edges in GeV (default 30,50,100,300)")
    ap.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, help="resamples")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--matching", choices=("auto", "genjetidx", "deltar"), default="auto")
    ap.add_argument("--max-dr", type=float, default=MAX_DR)
    ap.add_argument("--max-gen-eta", type=float, default=MAX_GEN_ABS_ETA)
    ap.add_argument("--quantiles", default=QUANTILES,
                    choices=("hazen", "linear", "weibull", "median_unbiased", "normal_unbiased"),
                    help="numpy quantile method (default %(default)s; 'linear' is numpy's own)")
    args = ap.parse_args(argv)
    try:
        result = yardstick(args.file, args.bins, args.bootstrap, args.seed, args.max_dr,
                           args.max_gen_eta, args.matching, args.quantiles)
    except YardstickError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    m = result["matching"]
    print(f"{result['file']}: {result['events']} events, {result['reco_jets']} reco jets, "
          f"{m['pairs']} matched ({m['method']}, Delta R < {m['max_dr']}, GenJet |eta| < "
          f"{m['max_gen_abs_eta']}; {m['genjetidx_pairs_dropped_by_dr']} Jet_genJetIdx pairs "
          "dropped by Delta R)\n")
    print(markdown_table(result))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
