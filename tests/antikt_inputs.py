"""Inputs and the FastJet peer for the anti-kT tests and benchmark.

* :func:`pythia_events`: final-state particles of Pythia 8 QCD events (pT-hat > 30 GeV,
  13.6 TeV), as float64 ``(px, py, pz, E)`` [GeV] per event; generated once (about 13 ms per
  event) and cached in ``~/.cache/hltemu``.
* :func:`random_event` and friends: random inputs, with exact ties (a lattice of equal pT),
  exact collinear pairs and duplicates, massive and pT = 0 momenta.
* :func:`fastjet_jets`: FastJet's C++ clustering of many events in one call
  (``fastjet.ClusterSequence`` on an awkward array: the event loop stays in C++).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

#: Pythia settings of the cached sample (the file name carries them).
PYTHIA_PROCESS = "qcd"
PYTHIA_SEED = 4242
PYTHIA_PTHAT = 30.0
PYTHIA_SQRT_S = 13600.0

Event = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _cache_dir() -> Path:
    from hltemu.simulate.pythia import PythiaError, cache_dir

    try:
        return cache_dir()
    except PythiaError as exc:
        pytest.skip(str(exc))


@functools.lru_cache(maxsize=2)
def pythia_events(n_events: int = 1000) -> list[Event]:
    """``n_events`` Pythia QCD events: each ``(px, py, pz, E)`` of its final-state particles."""
    from importlib.metadata import version

    path = _cache_dir() / (f"antikt-pythia-{version('pythia8mc')}-{PYTHIA_PROCESS}-"
                           f"{PYTHIA_SEED}-{PYTHIA_PTHAT!r}-{n_events}.npz")
    if not path.is_file():
        from hltemu.simulate.pythia import PythiaGenerator

        gen = PythiaGenerator(PYTHIA_PROCESS, PYTHIA_SQRT_S, PYTHIA_SEED,
                              pthat_min=PYTHIA_PTHAT, keep_hard_process=False)
        parts = [gen.next() for _ in range(n_events)]
        counts = np.array([len(p) for p in parts], dtype=np.int64)
        cols = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("px", "py", "pz", "e")}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, counts=counts, **cols)
        os.replace(tmp, path)
    with np.load(path) as data:  # read each array once (an NpzFile re-reads on access)
        counts = data["counts"]
        cols = [data[k] for k in ("px", "py", "pz", "e")]
    off = np.concatenate([[0], np.cumsum(counts)])
    return [tuple(c[off[i]:off[i + 1]] for c in cols) for i in range(n_events)]


def massless(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> Event:
    return pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)


def random_event(rng: np.random.Generator, n: int, eta_max: float = 4.0) -> Event:
    """Massless particles with a falling pT spectrum [GeV], uniform in eta and phi."""
    pt = 0.3 + 0.5 * rng.pareto(2.0, n)
    return massless(pt, rng.uniform(-eta_max, eta_max, n), rng.uniform(-np.pi, np.pi, n))


def lattice_event(rng: np.random.Generator, n: int) -> Event:
    """Exact ties everywhere: pT in {1, 2, 4} GeV on a 0.25 x 2pi/16 eta-phi lattice (so many
    pairs have equal distances and equal d_ij), duplicates included."""
    eta = 0.25 * rng.integers(-6, 7, n)
    phi = (2 * np.pi / 16) * rng.integers(0, 16, n) - np.pi
    return massless(rng.choice([1.0, 2.0, 4.0], n), eta, phi)


def collinear_event(rng: np.random.Generator, n: int) -> Event:
    """A third of the particles exactly collinear with another (some exact duplicates)."""
    pt = 0.3 + 0.5 * rng.pareto(2.0, n)
    eta = rng.uniform(-3.0, 3.0, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    k = n // 3
    eta[:k], phi[:k] = eta[k:2 * k], phi[k:2 * k]
    pt[: k // 2] = pt[k:k + k // 2]
    perm = rng.permutation(n)
    return tuple(a[perm] for a in massless(pt, eta, phi))


def special_event(rng: np.random.Generator, n: int) -> Event:
    """Lattice ties plus pT = 0 momenta along the beam (E == |pz|, FastJet's MaxRap case),
    massive momenta and a particle at rest."""
    px, py, pz, e = (np.array(a) for a in lattice_event(rng, n))
    m = max(1, n // 5)
    px[:m], py[:m] = 0.0, 0.0
    e[:m] = np.abs(pz[:m])
    e[m:2 * m] += 3.0
    if n > 2 * m:
        px[2 * m], py[2 * m], pz[2 * m], e[2 * m] = 0.0, 0.0, 0.0, 1.0
    return px, py, pz, e


def concat(events: list[Event]) -> tuple[Event, np.ndarray]:
    """Flat ``(px, py, pz, E)`` of many events and their offsets."""
    counts = np.array([len(ev[0]) for ev in events], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat = tuple(np.concatenate([np.asarray(ev[k], dtype=np.float64) for ev in events])
                 if events else np.zeros(0) for k in range(4))
    return flat, offsets


def fastjet_definition(radius: float, strategy: str = "Best"):
    """FastJet's anti-kT, E-scheme, with the named strategy (``Best``, ``N2Plain``, ...)."""
    fastjet = pytest.importorskip("fastjet")
    # the binding's 4-argument constructor is (algorithm, R, strategy, recombination scheme)
    return fastjet.JetDefinition(fastjet.antikt_algorithm, float(radius),
                                 getattr(fastjet, strategy), fastjet.E_scheme)


def fastjet_array(flat: Event, offsets: np.ndarray):
    """The awkward array of Momentum4D records FastJet's multi-event interface takes."""
    import awkward as ak
    import vector  # noqa: F401  (registers the Momentum4D behaviour fastjet relies on)

    counts = np.diff(offsets)
    rec = ak.zip(dict(zip(("px", "py", "pz", "E"), flat, strict=True)), with_name="Momentum4D")
    return ak.unflatten(rec, counts)


def fastjet_jets(flat: Event, offsets: np.ndarray, radius: float, pt_min: float = 0.0,
                 strategy: str = "Best") -> list[dict[frozenset, np.ndarray]]:
    """Per event: {constituent input indices (within the event): (px, py, pz, E)} of FastJet's
    inclusive jets with pT >= pt_min."""
    import awkward as ak

    fastjet = pytest.importorskip("fastjet")
    cs = fastjet.ClusterSequence(fastjet_array(flat, offsets),
                                 fastjet_definition(radius, strategy))
    jets = cs.inclusive_jets(pt_min)
    cons = cs.constituent_index(pt_min)
    n_jets = ak.to_numpy(ak.num(jets, axis=1))
    mom = np.stack([ak.to_numpy(ak.flatten(jets[c])) for c in ("px", "py", "pz", "E")], axis=1)
    n_cons = ak.to_numpy(ak.flatten(ak.num(cons, axis=2)))
    idx = ak.to_numpy(ak.flatten(cons, axis=None))
    cons_off = np.concatenate([[0], np.cumsum(n_cons)])
    out = []
    k = 0
    for ev in range(len(offsets) - 1):
        d = {}
        for _ in range(int(n_jets[ev])):
            d[frozenset(idx[cons_off[k]:cons_off[k + 1]].tolist())] = mom[k].astype(np.float64)
            k += 1
        out.append(d)
    return out
