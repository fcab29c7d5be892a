"""Training the doublet CNN with PyTorch (optional extra ``hltemu[train]``).

``hltemu train-doublet-cnn FILES`` reads generated events (``hltemu generate``), finds their
doublets with the ``doublets`` stage (cpu backend), labels each one from truth (true: both hits
from one particle, ``sim_index >= 0``) and trains the network of :mod:`hltemu.cnn`:

* one optimisation step per group of ``batch_size`` doublets of one event (the event's hits are
  encoded once per step, the head sees that group), events and groups in a seeded random order;
* Adam, cosine-decayed learning rate, binary cross-entropy on the logit with true doublets
  weighted by ``n_fake / n_true`` (``--balance``), so the rare true doublets weigh as much as
  the fakes: what matters is the tail of true doublets at 99% efficiency;
* after every epoch the weights are exported and scored with the NumPy reference forward pass
  (the code the stage runs) on the validation events; the epoch with the best validation ROC
  AUC is kept, and its working point is the highest score threshold that keeps
  ``efficiency`` (default 99%) of the true validation doublets.

The same seed, data, options and number of threads give the same weights (PyTorch in
deterministic mode on the CPU).  PyTorch is imported only here, inside the functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from hltemu.cnn import (
    DEFAULT_FEATURES,
    DoubletCnn,
    encode_reference,
    head_reference,
    normalise,
    raw_features,
    roc_auc,
    save_model,
    working_point_for,
)
from hltemu.geometry import N_PIXEL_LAYERS
from hltemu.io import PIXEL_PAD_SHAPE
from hltemu.stages.doublets import DoubletsConfig

TORCH_MISSING = ("training the doublet CNN needs PyTorch, which is not installed: "
                 "pip install 'hltemu[train]'")


# -- data ----------------------------------------------------------------------------------------
@dataclass
class EventDoublets:
    """The doublets of one event, ready for training or scoring.

    ``pads`` float32 ``(n_hits, *PIXEL_PAD_SHAPE)`` [electrons]; ``inner``/``outer`` int64
    ``(n,)`` hit rows of the event; ``raw`` float32 ``(n, F)`` features before normalisation;
    ``inner_layer``/``outer_layer`` int64 ``(n,)``; ``label`` bool ``(n,)`` (true doublet).
    """

    pads: np.ndarray
    inner: np.ndarray
    outer: np.ndarray
    raw: np.ndarray
    inner_layer: np.ndarray
    outer_layer: np.ndarray
    label: np.ndarray

    @property
    def n(self) -> int:
        return int(self.label.shape[0])


@dataclass
class Dataset:
    events: list[EventDoublets]
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_doublets(self) -> int:
        return sum(e.n for e in self.events)

    @property
    def n_true(self) -> int:
        return int(sum(e.label.sum() for e in self.events))


def _file_record(path: Path, n_events: int) -> dict[str, Any]:
    """What the model's provenance says about one input file (with the generate settings when
    ``hltemu generate --record`` left a TOML next to it)."""
    import tomllib

    rec: dict[str, Any] = {"file": path.name, "events": n_events}
    toml = path.with_suffix(".toml")
    if toml.is_file():
        try:
            data = tomllib.loads(toml.read_text())
            rec["generate"] = data.get("generate", {})
            rec["command"] = data.get("command", "")
        except (tomllib.TOMLDecodeError, OSError):
            pass
    return rec


def build_dataset(files: Sequence[str | Path], features: tuple[str, ...] = DEFAULT_FEATURES,
                  doublets_cfg: DoubletsConfig | None = None, max_events: int | None = None
                  ) -> Dataset:
    """Doublets of every event of ``files`` (at most ``max_events`` in all) with truth labels."""
    from hltemu.backends import get_backend
    from hltemu.io import read_collections
    from hltemu.stages.doublets import find_doublets

    cfg = doublets_cfg or DoubletsConfig()
    be = get_backend("cpu")
    out = Dataset([])
    for f in files:
        if max_events is not None and len(out.events) >= max_events:
            break
        hits = read_collections(f, ["PixelHit"])["PixelHit"]
        if max_events is not None:
            hits = hits.select_events(0, max_events - len(out.events))
        if "sim_index" not in hits:
            raise click.ClickException(f"{f}: PixelHit has no sim_index (truth); training needs "
                                       "files made by `hltemu generate`")
        d = find_doublets(hits, cfg, be)
        raw = raw_features(d.columns, features)
        pads = np.asarray(hits["pad"], dtype=np.float32)
        for e in range(hits.n_events):
            h0, h1 = int(hits.offsets[e]), int(hits.offsets[e + 1])
            s = slice(int(d.offsets[e]), int(d.offsets[e + 1]))
            out.events.append(EventDoublets(
                pads=np.ascontiguousarray(pads[h0:h1]), inner=d["inner"][s].astype(np.int64),
                outer=d["outer"][s].astype(np.int64), raw=raw[s],
                inner_layer=d["inner_layer"][s].astype(np.int64),
                outer_layer=d["outer_layer"][s].astype(np.int64), label=d["sim_index"][s] >= 0))
        out.files.append(_file_record(Path(f), hits.n_events))
    return out


def score_dataset(model: DoubletCnn, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, labels)`` of every doublet of ``data`` with the NumPy reference forward."""
    scores, labels = [], []
    for ev in data.events:
        emb = encode_reference(model, ev.pads)
        feats = normalise(model, ev.raw)
        scores.append(head_reference(model, emb[ev.inner], emb[ev.outer], feats,
                                     ev.inner_layer, ev.outer_layer))
        labels.append(ev.label)
    return np.concatenate(scores), np.concatenate(labels)


def fake_rejection(scores: np.ndarray, labels: np.ndarray, working_point: float) -> float:
    """Fraction of fake doublets with ``score < working_point``."""
    fake = ~labels
    return float((scores[fake] < np.float32(working_point)).mean()) if fake.any() else math.nan


# -- the PyTorch network ----------------------------------------------------------------------
def _torch():
    try:
        import torch
    except ImportError:
        raise click.ClickException(TORCH_MISSING) from None
    return torch


def torch_network(conv1: int, conv2: int, kernel1: int, kernel2: int, embed: int, hidden: int,
                  n_features: int, n_layers: int = N_PIXEL_LAYERS) -> Any:
    """The PyTorch twin of :class:`hltemu.cnn.DoubletCnn` (same layer names and shapes)."""
    torch = _torch()
    nn = torch.nn
    h2 = PIXEL_PAD_SHAPE[0] - kernel1 - kernel2 + 2
    w2 = PIXEL_PAD_SHAPE[1] - kernel1 - kernel2 + 2

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, conv1, kernel1)
            self.conv2 = nn.Conv2d(conv1, conv2, kernel2)
            self.embed = nn.Linear(conv2 * h2 * w2, embed)
            self.hidden = nn.Linear(2 * embed + n_features + 2 * n_layers, hidden)
            self.output = nn.Linear(hidden, 1)
            self.register_buffer("eye", torch.eye(n_layers))

        def encode(self, pads: Any) -> Any:
            x = torch.relu(self.conv1(pads[:, None]))
            x = torch.relu(self.conv2(x))
            return torch.relu(self.embed(x.flatten(1)))

        def forward(self, pads, inner, outer, feats, inner_layer, outer_layer):  # logits
            emb = self.encode(pads)
            x = torch.cat([emb[inner], emb[outer], feats, self.eye[inner_layer],
                           self.eye[outer_layer]], dim=1)
            return self.output(torch.relu(self.hidden(x)))[:, 0]

    return Net()


def export(net: Any, features: tuple[str, ...], mean: np.ndarray, std: np.ndarray,
           pad_scale: float, working_point: float = 0.5, efficiency: float = 0.99,
           training: dict[str, Any] | None = None) -> DoubletCnn:
    """A :class:`DoubletCnn` holding the network's current weights (float32)."""
    arrays = {k: v.detach().cpu().numpy().astype(np.float32).copy()
              for k, v in net.state_dict().items() if k != "eye"}
    return DoubletCnn(arrays, tuple(features), mean.astype(np.float32), std.astype(np.float32),
                      PIXEL_PAD_SHAPE, pad_scale, N_PIXEL_LAYERS, working_point, efficiency,
                      dict(training or {}))


@dataclass
class TrainResult:
    model: DoubletCnn
    history: list[dict[str, float]]
    seconds: float


def train(train_data: Dataset, val_data: Dataset, *, epochs: int = 20, seed: int = 1,
          lr: float = 3e-3, batch_size: int = 8192, threads: int = 2, balance: bool = True,
          efficiency: float = 0.99, conv1: int = 4, conv2: int = 8, kernel1: int = 3,
          kernel2: int = 3, embed: int = 16, hidden: int = 32, pad_scale: float = 1.0e4,
          features: tuple[str, ...] = DEFAULT_FEATURES, log: Any = None) -> TrainResult:
    """Train on ``train_data``, pick the epoch with the best validation AUC; see module doc."""
    torch = _torch()
    if train_data.n_doublets == 0 or train_data.n_true == 0:
        raise click.ClickException("the training files give no (true) doublets to train on")
    if val_data.n_doublets == 0 or val_data.n_true == 0:
        raise click.ClickException("the validation events give no (true) doublets")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)

    raw = np.concatenate([e.raw for e in train_data.events]).astype(np.float64)
    mean = raw.mean(axis=0)
    std = raw.std(axis=0)
    std[~(std > 0)] = 1.0
    del raw
    n_true = train_data.n_true
    pos_weight = (train_data.n_doublets - n_true) / n_true if balance else 1.0

    net = torch_network(conv1, conv2, kernel1, kernel2, embed, hidden, len(features))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = sum(max(1, math.ceil(e.n / batch_size)) for e in train_data.events)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch,
                                                       eta_min=lr / 20)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    tensors = []
    for e in train_data.events:
        feats = ((e.raw - mean) / std).astype(np.float32)
        tensors.append(tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (
            e.pads / np.float32(pad_scale), e.inner, e.outer, feats, e.inner_layer,
            e.outer_layer, e.label.astype(np.float32))))

    best: tuple[float, DoubletCnn | None] = (-1.0, None)
    history = []
    for epoch in range(epochs):
        net.train()
        total, count = 0.0, 0
        for ev in rng.permutation(len(tensors)):
            pads, inner, outer, feats, li, lo, label = tensors[ev]
            order = torch.from_numpy(rng.permutation(label.shape[0]))
            for s in range(0, label.shape[0], batch_size):
                idx = order[s:s + batch_size]
                opt.zero_grad()
                logits = net(pads, inner[idx], outer[idx], feats[idx], li[idx], lo[idx])
                loss = loss_fn(logits, label[idx])
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * idx.shape[0]
                count += idx.shape[0]
        net.eval()
        model = export(net, features, mean, std, pad_scale, efficiency=efficiency)
        scores, labels = score_dataset(model, val_data)
        auc = roc_auc(scores, labels)
        wp = working_point_for(scores, labels, efficiency)
        rej = fake_rejection(scores, labels, wp)
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "val_auc": auc,
                        "val_working_point": wp, "val_fake_rejection": rej})
        if log is not None:
            log(f"epoch {epoch + 1:3d}/{epochs}  loss {total / max(count, 1):.4f}  val AUC "
                f"{auc:.5f}  fakes removed at {100 * efficiency:g}% eff {100 * rej:.2f}%  "
                f"({time.perf_counter() - t0:.0f} s)")
        if auc > best[0]:
            best = (auc, export(net, features, mean, std, pad_scale, wp, efficiency))
    seconds = time.perf_counter() - t0
    assert best[1] is not None
    return TrainResult(best[1], history, seconds)


def provenance(result: TrainResult, train_data: Dataset, val_data: Dataset,
               options: dict[str, Any]) -> dict[str, Any]:
    """The ``training`` entry of the model's JSON."""
    import torch

    best = max(result.history, key=lambda h: h["val_auc"])
    return {
        "tool": "hltemu train-doublet-cnn",
        "torch_version": torch.__version__,
        "options": options,
        "train_files": train_data.files,
        "train_events": len(train_data.events),
        "train_doublets": train_data.n_doublets,
        "train_true_doublets": train_data.n_true,
        "validation_files": val_data.files,
        "validation_events": len(val_data.events),
        "validation_doublets": val_data.n_doublets,
        "validation_true_doublets": val_data.n_true,
        "best_epoch": best["epoch"],
        "validation_auc": best["val_auc"],
        "validation_fake_rejection": best["val_fake_rejection"],
        "seconds": round(result.seconds, 1),
        "history": result.history,
    }


# -- the command ---------------------------------------------------------------------------------
@click.command("train-doublet-cnn")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--validation", "-v", "val_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Validation file(s) (repeatable).  Default: the last 20% of the events.")
@click.option("--output", "-o", default="doublet_cnn", show_default=True,
              help="Output stem: writes STEM.json and STEM.npz.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True,
              help="Seed of the weight initialisation and of the event/doublet order.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3,
              show_default=True, help="Adam learning rate (cosine-decayed to lr/20).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Doublets per optimisation step (all from one event).")
@click.option("--max-events", type=click.IntRange(min=1), default=None,
              help="Use at most this many training events.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="PyTorch CPU threads (part of what makes a run reproducible).")
@click.option("--efficiency", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.99, show_default=True,
              help="True-doublet efficiency that sets the working point.")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Weight true doublets by n_fake / n_true in the loss.")
@click.option("--conv1", type=click.IntRange(min=1), default=4, show_default=True,
              help="Filters of the first convolution.")
@click.option("--conv2", type=click.IntRange(min=1), default=8, show_default=True,
              help="Filters of the second convolution.")
@click.option("--kernel", type=click.IntRange(min=1, max=4), default=3, show_default=True,
              help="Kernel size of both convolutions.")
@click.option("--embed", type=click.IntRange(min=1), default=16, show_default=True,
              help="Hit-embedding size.")
@click.option("--hidden", type=click.IntRange(min=1), default=32, show_default=True,
              help="Hidden units of the doublet head.")
def train_doublet_cnn(files: tuple[str, ...], val_files: tuple[str, ...], output: str,
                      epochs: int, seed: int, lr: float, batch_size: int,
                      max_events: int | None, threads: int, efficiency: float, balance: bool,
                      conv1: int, conv2: int, kernel: int, embed: int, hidden: int) -> None:
    """Train the doublet CNN on generated FILES; write STEM.json + STEM.npz.

    Prints the validation ROC AUC and the fraction of fake doublets removed at the working
    point.  Needs PyTorch: pip install 'hltemu[train]'.
    """
    _torch()
    echo = click.echo
    t0 = time.perf_counter()
    data = build_dataset(files, max_events=max_events)
    if val_files:
        val = build_dataset(val_files)
    else:
        n_val = max(1, len(data.events) // 5)
        if len(data.events) < 2:
            raise click.ClickException("need at least 2 events to split off validation; give "
                                       "--validation FILE")
        val = Dataset(data.events[-n_val:], [{"split": f"last {n_val} events of the training "
                                              "files"}])
        data = Dataset(data.events[:-n_val], data.files)
    echo(f"training: {len(data.events)} events, {data.n_doublets} doublets "
         f"({data.n_true} true); validation: {len(val.events)} events, {val.n_doublets} "
         f"doublets ({val.n_true} true); data ready in {time.perf_counter() - t0:.0f} s")
    options = {"epochs": epochs, "seed": seed, "lr": lr, "batch_size": batch_size,
               "threads": threads, "efficiency": efficiency, "balance": balance,
               "conv1": conv1, "conv2": conv2, "kernel": kernel, "embed": embed,
               "hidden": hidden, "max_events": max_events}
    result = train(data, val, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size,
                   threads=threads, balance=balance, efficiency=efficiency, conv1=conv1,
                   conv2=conv2, kernel1=kernel, kernel2=kernel, embed=embed, hidden=hidden,
                   log=echo)
    m = result.model
    final = DoubletCnn(m.arrays, m.features, m.feature_mean, m.feature_std, m.pad_shape,
                       m.pad_scale, m.n_layers, m.working_point, m.working_point_efficiency,
                       provenance(result, data, val, options))
    json_path, npz_path = save_model(final, output)
    info = final.training
    scores, labels = score_dataset(final, val)
    kept = float((scores[labels] >= np.float32(final.working_point)).mean())
    echo(f"best epoch {info['best_epoch']}: validation AUC {info['validation_auc']:.5f}; "
         f"working point {final.working_point:.6g} keeps {100 * kept:.2f}% of true doublets "
         f"and removes {100 * info['validation_fake_rejection']:.2f}% of fakes")
    echo(f"{final.n_parameters} parameters; wrote {json_path} and {npz_path} "
         f"({npz_path.stat().st_size} bytes) in {result.seconds:.0f} s of training")
