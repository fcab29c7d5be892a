"""The input schema: tree and collection names, column specifications, :data:`INPUT_SCHEMA`,
the event identifiers, the metadata and provenance keys, :func:`branch_name` and
:func:`describe_schema`.

Event identifiers
-----------------
Every event of a file made by ``hltemu generate`` carries CMS NanoAOD's three identifiers, as
NanoAOD stores them: the top-level branches ``run`` (uint32), ``luminosityBlock`` (uint32) and
``event`` (uint64), without a collection prefix.  hltemu holds them as the columns ``run``,
``luminosityBlock`` and ``event`` of the event-level collection :data:`EVENT` (``Event``), whose
other columns are the branches ``Event_<column>`` (:func:`branch_name`); ``hltemu run`` copies
the ``Event`` collection, and so the identifiers, from its input to its output.  A file written
before the identifiers existed has ``Event_event`` (int64, restarting at 0 in every file) and
no ``run`` or ``luminosityBlock``: the reader takes ``Event_event`` as the column ``event``.

``hltemu generate`` numbers events so that ``(run, luminosityBlock, event)`` is unique across
the files of a production:

* ``run`` is the generation seed (``--seed``), or ``--run N``;
* ``luminosityBlock`` is ``--lumi N`` (default 1): the index of the file within the
  production when its files share a run number;
* ``event`` counts from ``--first-event N``, by default ``(lumi - 1) * events + 1``, so that
  files of equal ``--events`` with consecutive lumi blocks number their events consecutively
  across the run, as CMS simulation jobs do.

So the files of a production made with different seeds (each its own run), or with one
``--run`` and a different ``--lumi`` per file, never share an identifier.  (Two files with the
same seed hold the same events whatever their identifiers: a production needs a seed per file.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: Name of the TTree holding events, in every file hltemu reads or writes.
TREE_NAME = "Events"

#: Event-level collection carried from input to output (identifiers, pileup, vertex, weight).
EVENT = "Event"

#: Columns of :data:`EVENT` stored as top-level branches of their own name (NanoAOD's event
#: identifiers), not as ``Event_<column>``.
EVENT_ID_COLUMNS: tuple[str, ...] = ("run", "luminosityBlock", "event")

#: Largest run and luminosity-block numbers (uint32 branches, as in NanoAOD).
MAX_RUN = 2**32 - 1
#: Largest event number (uint64 branch, as in NanoAOD).
MAX_EVENT = 2**64 - 1

#: Pixel-charge pad stored per hit: PIXEL_PAD_SHAPE[0] pixels along the module's local x
#: (100 um pitch) times PIXEL_PAD_SHAPE[1] along local y (150 um pitch), centred on the cluster.
PIXEL_PAD_SHAPE: tuple[int, int] = (8, 8)


@dataclass(frozen=True)
class ColumnSpec:
    """One column: dtype, unit ('' when dimensionless), meaning, fixed inner shape per row.

    ``optional``: a file written by hltemu may lack the column (the reader otherwise requires
    every column of the schema in such a file), e.g. the event identifiers and weight, which
    files written before they existed, and outputs of runs on other files, do not have.
    """

    dtype: np.dtype
    unit: str
    doc: str
    shape: tuple[int, ...] = ()
    optional: bool = False


@dataclass(frozen=True)
class CollectionSpec:
    """One collection of the schema: its columns and whether it is event-level."""

    name: str
    columns: dict[str, ColumnSpec]
    per_event: bool = False
    doc: str = ""


def _c(dtype: str, unit: str, doc: str, shape: tuple[int, ...] = (), optional: bool = False
       ) -> ColumnSpec:
    return ColumnSpec(np.dtype(dtype), unit, doc, shape, optional)


def branch_name(collection: str, column: str, per_event: bool = True) -> str:
    """The TTree branch of ``column`` of ``collection``: ``<collection>_<column>``, except the
    event identifiers (:data:`EVENT_ID_COLUMNS` of the event-level :data:`EVENT`), which are
    the top-level branches ``run``, ``luminosityBlock`` and ``event`` as in NanoAOD.  (A
    jagged column with an inner shape also has its own counter ``n<collection>_<column>``.)"""
    if per_event and collection == EVENT and column in EVENT_ID_COLUMNS:
        return column
    return f"{collection}_{column}"


#: What ``hltemu generate`` writes and ``hltemu run`` reads.
INPUT_SCHEMA: dict[str, CollectionSpec] = {
    EVENT: CollectionSpec(
        EVENT,
        {
            "run": _c("uint32", "", "run number (branch 'run'): the generation seed or --run",
                      optional=True),
            "luminosityBlock": _c("uint32", "",
                                  "luminosity block (branch 'luminosityBlock'): --lumi, the "
                                  "file's index within a production", optional=True),
            "event": _c("uint64", "",
                        "event number (branch 'event'), unique within (run, luminosityBlock); "
                        "from --first-event", optional=True),
            "n_pileup": _c("int32", "", "number of pileup interactions overlaid", optional=True),
            "pv_z": _c("float32", "cm", "z of the hard-scatter vertex", optional=True),
            "weight": _c("float32", "",
                         "generator weight of the hard scatter (Pythia's info.weight()); 1.0 "
                         "for every event of hltemu's processes, which Pythia generates "
                         "unweighted", optional=True),
        },
        per_event=True,
        doc="event-level information: NanoAOD's event identifiers (branches run, "
            "luminosityBlock, event) and Event_* branches",
    ),
    "GenPart": CollectionSpec(
        "GenPart",
        {
            "pt": _c("float32", "GeV", "transverse momentum"),
            "eta": _c("float32", "", "pseudorapidity"),
            "phi": _c("float32", "rad", "azimuth in [-pi, pi)"),
            "mass": _c("float32", "GeV", "generator mass"),
            "pdgId": _c("int32", "", "PDG particle code"),
            "charge": _c("int32", "e", "electric charge"),
            "status": _c("int32", "", "1 = final state (Pythia isFinal), else 2"),
            "vx": _c("float32", "cm", "production vertex x"),
            "vy": _c("float32", "cm", "production vertex y"),
            "vz": _c("float32", "cm", "production vertex z"),
            "vertex": _c("int32", "", "interaction index: 0 = hard scatter, k > 0 = pileup k"),
        },
        doc="generator particles (truth), final state and the hard-process record",
    ),
    "PixelHit": CollectionSpec(
        "PixelHit",
        {
            "x": _c("float32", "cm", "global x"),
            "y": _c("float32", "cm", "global y"),
            "z": _c("float32", "cm", "global z"),
            "layer": _c("int32", "",
                        "0-3 barrel BPix1-4, 4-6 forward disks +z 1-3, 7-9 disks -z 1-3"),
            "module": _c("int32", "", "module index within the layer or disk"),
            "u": _c("float32", "cm", "module-local x (r-phi direction, 100 um pitch)"),
            "v": _c("float32", "cm", "module-local y (z in the barrel, r in disks; 150 um pitch)"),
            "size_x": _c("int32", "pixels", "cluster size along local x"),
            "size_y": _c("int32", "pixels", "cluster size along local y"),
            "charge": _c("float32", "electrons", "total cluster charge"),
            "pad": _c("float32", "electrons", "pixel charges around the cluster centre",
                      PIXEL_PAD_SHAPE),
            "sim_index": _c("int32", "", "truth: GenPart index of the particle, -1 for noise"),
        },
        doc="reconstructed pixel clusters (hits) of the Phase-1 pixel detector",
    ),
    "CaloCell": CollectionSpec(
        "CaloCell",
        {
            "id": _c("int32", "", "cell index in hltemu.geometry's calorimeter (ECAL then HCAL)"),
            "energy": _c("float32", "GeV", "measured energy, electronic noise included"),
            "true_energy": _c("float32", "GeV", "truth: energy deposited by particles"),
        },
        doc="calorimeter cells (every cell of the geometry, noise included)",
    ),
}

#: Name of the TObjString (JSON) that :class:`OutputWriter` writes beside the tree.
METADATA_KEY = "hltemu_metadata"

#: Name of the TObjString (JSON object) holding a file's provenance: how it was made
#: (:mod:`hltemu.io.provenance`), written by :class:`OutputWriter` when it closes the file.
PROVENANCE_KEY = "hltemu_provenance"


#: dtype kinds the reader turns into columns: bool, signed and unsigned integers, floats.
_NUMERIC_KINDS = frozenset("biuf")


def describe_schema(schema: Mapping[str, CollectionSpec] = INPUT_SCHEMA) -> list[dict[str, str]]:
    """One row per column of ``schema`` (for documentation and ``hltemu info``).

    Each row has the keys ``collection``, ``column``, ``branch`` (the TTree branch), ``dtype``,
    ``shape`` (inner shape per row, ``""`` for scalars), ``unit`` and ``doc``.
    """
    rows = []
    for cname, spec in schema.items():
        for col, cs in spec.columns.items():
            branch = branch_name(cname, col, spec.per_event)
            if cs.shape:
                branch += f" (flattened, counter n{cname}_{col})"
            elif not spec.per_event:
                branch += f" (counter n{cname})"
            rows.append({
                "collection": cname,
                "column": col,
                "branch": branch,
                "dtype": str(cs.dtype),
                "shape": " x ".join(map(str, cs.shape)),
                "unit": cs.unit,
                "doc": cs.doc,
            })
    return rows
