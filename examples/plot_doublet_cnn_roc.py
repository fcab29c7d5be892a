"""ROC of the doublet CNN against cut-based selections of the same doublets.

    pip install 'hltemu[plots]'
    python examples/plot_doublet_cnn_roc.py [FILE.root] [--out roc.png] [--weights MODEL]

FILE (default: the built-in ttbar PU50 sample, which the shipped model was not trained on) is
a file made by ``hltemu generate``.  Its doublets come from the ``doublets`` stage (the
Patatrack-style cuts); every one of them is then a point at (1, 1): all fakes and all true
doublets kept.  The plot shows, for the same doublets, the fraction of true doublets kept
against the fraction of fakes kept when

* cutting on the CNN score (stage ``doublet_cnn``), the model's working point marked;
* tightening one of the doublet stage's own cut variables further: ``|z0|`` (luminous region),
  ``|curvature|`` (minimum pT), and the cluster-length residual ``|size_y - predicted|`` of the
  worse of the two hits (cluster-size compatibility).

Prints the AUCs and, at 99% true-doublet efficiency, the fraction of fakes each one removes.
"""

from __future__ import annotations

import argparse
from importlib import resources

import numpy as np

from hltemu.backends import get_backend
from hltemu.cnn import FEATURES, load_model, roc_auc, roc_curve
from hltemu.extras import require_or_exit
from hltemu.io import read_collections
from hltemu.stages.doublet_cnn import score_doublets
from hltemu.stages.doublets import DoubletsConfig, find_doublets


def cut_scores(d) -> dict[str, np.ndarray]:
    """'Scores' of the cut-based selections: higher = looser cut passes (keep if >= t)."""
    cols = {k: np.asarray(v) for k, v in d.columns.items()}
    inner_pred = FEATURES["inner_length"][2](cols, np)
    outer_pred = FEATURES["outer_length"][2](cols, np)
    resid = np.maximum(np.abs(cols["inner_size_y"] - inner_pred),
                       np.abs(cols["outer_size_y"] - outer_pred))
    return {
        "cut on |z0|": -np.abs(cols["z0"]),
        "cut on |curvature| (pT)": -np.abs(cols["curvature"]),
        "cut on cluster-length residual": -resid,
    }


def fakes_removed_at(scores: np.ndarray, truth: np.ndarray, efficiency: float) -> float:
    fpr, tpr, _ = roc_curve(scores, truth)
    i = int(np.searchsorted(tpr, efficiency))  # first point keeping >= efficiency
    return 1.0 - float(fpr[min(i, fpr.size - 1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default=None,
                        help="ROOT file written by hltemu generate (default: built-in sample)")
    parser.add_argument("--out", default="doublet_cnn_roc.png", help="image to write")
    parser.add_argument("--weights", default="builtin:doublet_cnn", help="doublet-CNN model")
    parser.add_argument("--backend", default="cpu", help="reference, cpu or cuda")
    args = parser.parse_args()
    path = args.file or str(resources.files("hltemu") / "data" / "sample.root")
    require_or_exit("plots", "examples/plot_doublet_cnn_roc.py", modules=("matplotlib",))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        import mplhep

        plt.style.use(mplhep.style.CMS)
    except ImportError:
        pass

    be = get_backend(args.backend)
    hits = read_collections(path, ["PixelHit"])["PixelHit"].to(be)
    d = find_doublets(hits, DoubletsConfig(), be)
    model = load_model(args.weights)
    cnn = be.to_host(score_doublets(hits, d, model, be))
    d = d.to_host()
    truth = d["sim_index"] >= 0
    wp = np.float32(model.working_point)
    print(f"{path}: {hits.n_events} events, {d.size} doublets, {int(truth.sum())} true")
    print(f"CNN: AUC {roc_auc(cnn, truth):.4f}; working point {float(wp):.4g} keeps "
          f"{100 * (cnn[truth] >= wp).mean():.2f}% of true doublets, removes "
          f"{100 * (cnn[~truth] < wp).mean():.2f}% of fakes, keeps "
          f"{100 * (cnn >= wp).mean():.2f}% of all doublets")

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(16, 7.5))
    curves = {"doublet CNN": cnn, **cut_scores(d)}
    for name, s in curves.items():
        fpr, tpr, _ = roc_curve(s, truth)
        label = f"{name} (AUC {roc_auc(s, truth):.3f})"
        ax.plot(fpr, tpr, label=label)
        zoom.plot(fpr, tpr, label=label)
        print(f"{name:34s} AUC {roc_auc(s, truth):.4f}   fakes removed at 99% true eff "
              f"{100 * fakes_removed_at(s, truth, 0.99):6.2f}%")
    for a in (ax, zoom):
        a.plot([1.0], [1.0], "k*", markersize=14, label="doublets stage (cuts only)")
        a.plot([(cnn[~truth] >= wp).mean()], [(cnn[truth] >= wp).mean()], "o", color="C0",
               markersize=9, label="CNN working point")
        a.set_xlabel("fake doublets kept (fraction)")
        a.set_ylabel("true doublets kept (fraction)")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    zoom.set_xlim(0, 1.01)
    zoom.set_ylim(0.95, 1.001)
    zoom.axhline(0.99, color="grey", linestyle=":")
    ax.legend(loc="lower right", fontsize=13)
    ax.set_title(f"ttbar doublets, {hits.n_events} events", fontsize=16)
    zoom.set_title("high-efficiency region", fontsize=16)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
