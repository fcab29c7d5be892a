"""Event generation: Pythia 8 events with pileup through a CMS-like toy detector.

* :mod:`~hltemu.simulate.pythia`: the hard scatter and minimum-bias pileup (silenced Pythia 8);
* :mod:`~hltemu.simulate.tracker`: helices in the solenoid, pixel clusters with charge pads;
* :mod:`~hltemu.simulate.calorimeter`: showers, non-compensating response, cell noise;
* :mod:`~hltemu.simulate.generate`: events -> :class:`~hltemu.batch.EventBatch` es -> ROOT;
* :mod:`~hltemu.simulate.command`: the ``hltemu generate`` command;
* :mod:`~hltemu.simulate.plots`: check plots (needs the ``plots`` extra: hist, mplhep).

The detector is :mod:`hltemu.geometry`; the settings are
:class:`~hltemu.config.GenerateConfig` and :class:`~hltemu.config.DetectorConfig`.
"""

from __future__ import annotations

__all__ = ["EventGenerator", "SimulationError", "generate_batches", "generate_file"]


def __getattr__(name: str):
    # Lazy: ``hltemu --help`` imports the command module only, not Pythia or Numba code.
    if name in __all__:
        from hltemu.simulate import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'hltemu.simulate' has no attribute {name!r}")
