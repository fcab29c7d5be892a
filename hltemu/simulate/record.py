"""What a generated file records about how it was made: the run's settings, the detector (its
differences from the default), the provenance object written into the ROOT file
(:func:`generation_provenance`) and the run record (``--record``, TOML).  Read by
:mod:`hltemu.simulate.generate` and :mod:`hltemu.simulate.command`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hltemu.config import DetectorConfig, GenerateConfig
from hltemu.geometry import Geometry, geometry_for

if TYPE_CHECKING:
    from hltemu.simulate.generate import GenerationStats


def _table(obj: Any) -> dict[str, Any]:
    """The fields of a config dataclass as a TOML/JSON-ready dict (tuples as lists)."""
    import dataclasses

    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v
            for f in dataclasses.fields(obj)}


def settings_table(cfg: GenerateConfig) -> dict[str, Any]:
    """The run's settings (:class:`GenerateConfig` fields) with the event identifiers resolved:
    ``run`` and ``first_event`` as the numbers written (never ``None``), so that the table
    reproduces the file on its own."""
    table = _table(cfg)
    table["run"], table["first_event"] = cfg.run_number, cfg.first_event_number
    return table


def detector_summary(detector: DetectorConfig | None = None, geometry: Geometry | None = None
                     ) -> dict[str, Any]:
    """A short description of the detector for the provenance: field (T), pixel layers and
    disks, calorimeter layers and cells, whether it is hltemu's default detector, the
    settings that differ from the default (``non_default``) and a SHA-256 of every setting
    (``sha256``: equal hashes, equal detectors)."""
    import hashlib
    import json

    det = detector or DetectorConfig()
    geom = geometry or geometry_for(det)
    full, default = _table(det), _table(DetectorConfig())
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
    return {
        "b_field_T": det.b_field,
        "pixel_barrel_layers": len(det.barrel_radii),
        "pixel_disks_per_side": len(det.disk_z),
        "calorimeter_layers": list(det.calo_names),
        "calorimeter_cells": int(geom.calo.n_cells),
        "default": full == default,
        "non_default": {k: v for k, v in full.items() if v != default[k]},
        "sha256": digest,
    }


def generation_provenance(stats: GenerationStats, detector: DetectorConfig | None = None,
                          command: str | None = None, compression: str = "zlib",
                          geometry: Geometry | None = None) -> dict[str, Any]:
    """The provenance of a generated file (:mod:`hltemu.io.provenance`): the common header
    (``kind = "generate"``, versions with pythia8mc, ``command``), then

    * ``settings``: :func:`settings_table` and ``units`` (unit of each setting that has one);
    * ``event_ids``: ``run``, ``luminosityBlock``, ``first_event``, ``last_event``;
    * ``events``, ``compression``, ``seconds`` (wall time, Pythia initialisation included);
    * ``detector``: :func:`detector_summary`;
    * ``pythia``: :meth:`EventGenerator.pythia_statistics` at the end of the run
      (``hard_process.sigma_gen_mb`` +- ``sigma_err_mb``: Pythia's cross-section estimate of
      the hard process in mb, from the events generated);
    * ``pileup``: ``mean_requested`` (the Poisson mean), ``mean_generated``, ``min``, ``max``
      and ``total`` interactions overlaid;
    * ``weights``: ``sum`` and ``all_one`` of ``Event_weight`` (the hard-scatter weight).
    """
    import dataclasses

    from hltemu.io import provenance_header

    cfg = stats.config
    pu = np.asarray(stats.per_event.pileup, dtype=np.int64)
    units = {f.name: f.metadata["unit"] for f in dataclasses.fields(cfg)
             if f.metadata.get("unit")}
    first = cfg.first_event_number
    prov = provenance_header("generate", command, packages=("pythia8mc",))
    prov.update({
        "settings": settings_table(cfg),
        "units": units,
        "event_ids": {"run": cfg.run_number, "luminosityBlock": cfg.lumi,
                      "first_event": first, "last_event": first + stats.events - 1},
        "events": stats.events,
        "compression": compression,
        "seconds": round(stats.seconds, 3),
        "detector": detector_summary(detector, geometry),
        "pythia": stats.pythia,
        "pileup": {
            "mean_requested": cfg.pileup,
            "mean_generated": float(pu.mean()) if pu.size else None,
            "min": int(pu.min()) if pu.size else None,
            "max": int(pu.max()) if pu.size else None,
            "total": int(pu.sum()),
        },
        "weights": {"sum": float(np.sum(stats.per_event.weight)),
                    "all_one": bool(np.all(np.asarray(stats.per_event.weight) == 1.0))},
    })
    return prov


def run_record(cfg: GenerateConfig, detector: DetectorConfig | None = None,
               command: str = "") -> dict[str, Any]:
    """What reproduces a generated file: versions, the command line, the run's settings
    (table ``generate``, :func:`settings_table`) and the detector's (table ``detector``), as a
    TOML-ready dict."""
    from importlib.metadata import version

    from hltemu import __version__

    return {
        "command": command,
        "hltemu_version": __version__,
        "pythia8mc_version": version("pythia8mc"),
        "generate": settings_table(cfg),
        "detector": _table(detector or DetectorConfig()),
    }


def save_run_record(path: str | Path, cfg: GenerateConfig, detector: DetectorConfig | None = None,
                    command: str = "") -> None:
    """Write :func:`run_record` as TOML to ``path`` (atomically:
    :func:`~hltemu.outputs.atomic_output`)."""
    import tomli_w

    from hltemu.outputs import atomic_output

    text = ("# Settings that reproduce a file made by `hltemu generate` (see `command`).\n"
            + tomli_w.dumps(run_record(cfg, detector, command)))
    with atomic_output(path, "run record") as out:
        out.path.write_text(text)
