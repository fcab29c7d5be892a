"""Pythia 8 (the ``pythia8mc`` wheel) for the hard scatter and the minimum-bias pileup, silenced.

Each :class:`PythiaGenerator` owns one Pythia instance with its own seed and returns the
particles of an interaction as NumPy arrays (:class:`Interaction`).  Unstable particles decay
inside Pythia unless their proper lifetime ``c tau`` exceeds 10 mm (as for CMS's generator-level
"stable" particles: K0S, Lambda, charged pions and kaons stay; B and D hadrons decay, so their
products start at displaced vertices).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Pythia settings per process (plus the common ones in :func:`_common_settings`).
PROCESS_SETTINGS: dict[str, tuple[str, ...]] = {
    "ttbar": ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on"),
    "qcd": ("HardQCD:all = on",),  # plus PhaseSpace:pTHatMin
    "zbb": ("WeakSingleBoson:ffbar2gmZ = on", "WeakZ0:gmZmode = 2", "23:onMode = off",
            "23:onIfAny = 5"),
    "zqq": ("WeakSingleBoson:ffbar2gmZ = on", "WeakZ0:gmZmode = 2", "23:onMode = off",
            "23:onIfAny = 1 2 3 4 5"),
    "minbias": ("SoftQCD:inelastic = on",),
}

#: Largest seed Pythia accepts (Random:seed).
MAX_PYTHIA_SEED = 900_000_000

#: Pythia status codes kept as the hard-process record (status 2 in GenPart): intermediate
#: (22: t, W, Z) and outgoing (23: b, W decay products) particles of the hardest process.
HARD_PROCESS_STATUS: tuple[int, ...] = (22, 23)


#: Seed of the Pythia instance that writes the minimum-bias MPI initialisation file (fixed, so
#: that the file, and hence every run using it, does not depend on which run wrote it).
MPI_INIT_SEED = 1


class PythiaError(RuntimeError):
    """Pythia could not be set up or keeps failing to generate."""


@dataclass
class Interaction:
    """Particles of one interaction (arrays of equal length; momenta GeV, vertices cm).

    ``final`` is True for final-state particles; the others are the hard-process record.
    Vertices are relative to the interaction point (Pythia's production vertex, mm -> cm).
    ``weight`` is Pythia's event weight (``info.weight()``): 1.0 for the unweighted events of
    every process hltemu generates.
    """

    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    mass: np.ndarray
    pdg_id: np.ndarray
    charge: np.ndarray  # float, in units of e (quarks: fractional)
    final: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    vz: np.ndarray
    weight: float = 1.0

    def __len__(self) -> int:
        return int(self.px.shape[0])


def _common_settings(sqrt_s: float, seed: int) -> tuple[str, ...]:
    return (
        "Print:quiet = on",
        "Next:numberCount = 0",
        "Next:numberShowEvent = 0",
        "Next:numberShowInfo = 0",
        "Next:numberShowProcess = 0",
        f"Beams:eCM = {sqrt_s!r}",
        "Random:setSeed = on",
        f"Random:seed = {seed}",
        "ParticleDecays:limitTau0 = on",
        "ParticleDecays:tau0Max = 10.",
    )


class PythiaGenerator:
    """One silenced Pythia 8 instance generating ``process`` at ``sqrt_s`` (GeV).

    ``seed`` is Pythia's own seed (1..900,000,000); ``keep_hard_process`` adds the
    hard-process record (status 22/23 particles) to each :class:`Interaction`.
    """

    def __init__(self, process: str, sqrt_s: float, seed: int, pthat_min: float = 30.0,
                 keep_hard_process: bool = True, max_failures: int = 20,
                 pthat_bias: float = 0.0) -> None:
        if process not in PROCESS_SETTINGS:
            raise PythiaError(
                f"unknown process {process!r}; choices: {', '.join(PROCESS_SETTINGS)}")
        if not 1 <= seed <= MAX_PYTHIA_SEED:
            raise PythiaError(f"Pythia seed must be in 1..{MAX_PYTHIA_SEED}, got {seed}")
        try:
            import pythia8mc
        except ImportError as exc:  # pragma: no cover - a runtime dependency
            raise PythiaError(f"cannot import pythia8mc ({exc}); pip install pythia8mc") from None
        self.process = process
        self.keep_hard_process = keep_hard_process
        self.max_failures = max_failures
        settings = [*_common_settings(sqrt_s, seed), *PROCESS_SETTINGS[process]]
        if process == "qcd":
            settings.append(f"PhaseSpace:pTHatMin = {pthat_min!r}")
            if pthat_bias > 0:
                # events drawn with an extra (pT-hat / pT-hat-min)^bias: a flatter pT-hat
                # spectrum, each event weighted by the inverse (info.weight())
                settings += ["PhaseSpace:bias2Selection = on",
                             f"PhaseSpace:bias2SelectionPow = {pthat_bias!r}",
                             f"PhaseSpace:bias2SelectionRef = {max(pthat_min, 1.0)!r}"]
        if process == "minbias":
            # Initialising multiparton interactions for diffraction takes ~5 s; the tables are
            # computed once (with a fixed seed) and loaded from a cache file afterwards.
            init_file = mpi_init_file(sqrt_s, pythia8mc)
            settings += ["MultipartonInteractions:reuseInit = 2",
                         f"MultipartonInteractions:initFile = {init_file}"]
        # No banner (second argument False); Print:quiet silences init and per-event output.
        self._pythia = pythia8mc.Pythia("", False)
        for s in settings:
            if not self._pythia.readString(s):
                raise PythiaError(f"Pythia rejected the setting {s!r}")
        if not self._pythia.init():
            raise PythiaError(f"Pythia initialisation failed for process {process!r} at "
                              f"sqrt(s) = {sqrt_s} GeV")

    def reseed(self, seed: int) -> None:
        """Restart Pythia's random-number generator with ``seed`` (1..900,000,000): the next
        interactions depend on this seed, not on what was generated before."""
        if not 1 <= seed <= MAX_PYTHIA_SEED:
            raise PythiaError(f"Pythia seed must be in 1..{MAX_PYTHIA_SEED}, got {seed}")
        self._pythia.rndm.init(seed)

    def next(self) -> Interaction:
        """Generate one interaction; retries Pythia's occasional failures."""
        for _ in range(self.max_failures):
            if self._pythia.next():
                it = self._extract(self._pythia.event)
                it.weight = float(self._pythia.infoPython().weight())
                return it
        raise PythiaError(f"Pythia failed {self.max_failures} times in a row ({self.process})")

    def statistics(self) -> dict[str, float | int | str]:
        """Pythia's figures for the events generated so far: ``sigma_gen_mb`` and
        ``sigma_err_mb`` (the estimated cross-section of the process and its statistical
        error, in mb: Pythia's ``info.sigmaGen()``, ``info.sigmaErr()``), ``n_tried``,
        ``n_selected``, ``n_accepted`` (phase-space points tried, selected, events accepted)
        and ``weight_sum``.  The estimate improves with the number of events."""
        info = self._pythia.infoPython()
        return {"process": self.process, "sigma_gen_mb": float(info.sigmaGen()),
                "sigma_err_mb": float(info.sigmaErr()), "n_tried": int(info.nTried()),
                "n_selected": int(info.nSelected()), "n_accepted": int(info.nAccepted()),
                "weight_sum": float(info.weightSum())}

    def _extract(self, event) -> Interaction:
        keep_hard = self.keep_hard_process
        rows = []
        for p in event.particles():
            final = p.isFinal()
            if final or (keep_hard and p.statusAbs() in HARD_PROCESS_STATUS):
                rows.append((p.px(), p.py(), p.pz(), p.e(), p.m(), p.charge(), p.xProd(),
                             p.yProd(), p.zProd(), p.id(), final))
        if not rows:  # pragma: no cover - Pythia events always have final-state particles
            raise PythiaError("Pythia returned an event without particles")
        a = np.array([r[:9] for r in rows], dtype=np.float64)
        pdg = np.array([r[9] for r in rows], dtype=np.int32)
        final = np.array([r[10] for r in rows], dtype=bool)
        return Interaction(
            a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], pdg, a[:, 5], final,
            a[:, 6] * 0.1, a[:, 7] * 0.1, a[:, 8] * 0.1,
        )


def cache_dir() -> Path:
    """hltemu's cache directory (``$XDG_CACHE_HOME/hltemu``, else a per-user temp directory),
    created if needed; :class:`PythiaError` when neither is writable."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for d in (Path(base) / "hltemu", Path(tempfile.gettempdir()) / f"hltemu-{os.getuid()}"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise PythiaError(f"no writable cache directory for Pythia's MPI tables (tried {base}/hltemu)")


def mpi_init_file(sqrt_s: float, pythia8mc) -> Path:
    """The minimum-bias MPI initialisation file for ``sqrt_s``; written (once, atomically, by a
    Pythia instance seeded with :data:`MPI_INIT_SEED`) if not cached yet."""
    from importlib.metadata import version

    path = cache_dir() / f"pythia-{version('pythia8mc')}-minbias-{sqrt_s!r}-mpi.dat"
    if path.is_file():
        return path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        p = pythia8mc.Pythia("", False)
        for setting in (*_common_settings(sqrt_s, MPI_INIT_SEED), *PROCESS_SETTINGS["minbias"],
                        "MultipartonInteractions:reuseInit = 1",
                        f"MultipartonInteractions:initFile = {tmp}"):
            p.readString(setting)
        if not p.init():
            raise PythiaError(
                f"Pythia minimum-bias initialisation failed at sqrt(s) = {sqrt_s} GeV")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
