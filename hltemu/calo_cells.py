"""Checks of a ``CaloCell`` collection shared by the stages that read it (``topocluster``,
``rho``): one-line errors naming the stage, the column, the event and the value."""

from __future__ import annotations

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection
from hltemu.pipeline import PipelineError
from hltemu.xpsafe import any_true, item

#: CaloCell columns the calorimeter stages read: the cell id in
#: :func:`hltemu.geometry.default_geometry`'s calorimeter and the measured energy [GeV].
CELL_COLUMNS: tuple[str, ...] = ("id", "energy")


def check_cells(cells: Collection, n_ids: int, be: Backend, stage: str) -> None:
    """Raise :class:`PipelineError` for a CaloCell collection ``stage`` cannot use: a missing
    column, an id that is not an integer or out of ``0..n_ids-1``, a non-finite energy.  (An id
    repeated within an event is found where the stage maps cells: :func:`repeated_id_error`.)"""
    missing = [c for c in CELL_COLUMNS if c not in cells]
    if missing:
        raise PipelineError(f"stage {stage!r} needs CaloCell column(s) {missing}; the "
                            f"collection has {sorted(cells.columns)}")
    ids = cells["id"]
    if ids.dtype.kind not in "iu":
        raise PipelineError(f"stage {stage!r}: CaloCell.id must be integers, got dtype "
                            f"{ids.dtype}")
    if cells.size == 0:
        return
    xp = be.xp
    bad = (ids < 0) | (ids >= n_ids)
    if any_true(bad):
        row = item(xp.argmax(bad))
        raise PipelineError(
            f"stage {stage!r}: CaloCell.id has the value {int(be.to_host(ids[row]))} (event "
            f"{event_of(cells, row, be)}); cell ids of the calorimeter are 0-{n_ids - 1}")
    energy = cells["energy"]
    bad = ~xp.isfinite(energy)
    if any_true(bad):
        row = item(xp.argmax(bad))
        raise PipelineError(
            f"stage {stage!r}: CaloCell.energy has the value {float(be.to_host(energy[row]))} "
            f"GeV (cell id {int(be.to_host(ids[row]))}, event {event_of(cells, row, be)}); "
            "energies must be finite")


def event_of(cells: Collection, row: int, be: Backend) -> int:
    """The event that row ``row`` of ``cells`` belongs to."""
    return int(np.searchsorted(be.to_host(cells.offsets)[1:], row, side="right"))


def repeated_id_error(id_value: int, event: int, stage: str) -> PipelineError:
    """The error for cell id ``id_value`` listed twice in ``event``."""
    return PipelineError(f"stage {stage!r}: CaloCell.id {id_value} appears more than once in "
                         f"event {event}; each cell may be listed once per event")
