"""The input schema: tree and collection names, column specifications, :data:`INPUT_SCHEMA`,
the metadata key, and :func:`describe_schema`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: Name of the TTree holding events, in every file hltemu reads or writes.
TREE_NAME = "Events"

#: Event-level collection carried from input to output (event number, pileup, vertex).
EVENT = "Event"

#: Pixel-charge pad stored per hit: PIXEL_PAD_SHAPE[0] pixels along the module's local x
#: (100 um pitch) times PIXEL_PAD_SHAPE[1] along local y (150 um pitch), centred on the cluster.
PIXEL_PAD_SHAPE: tuple[int, int] = (8, 8)


@dataclass(frozen=True)
class ColumnSpec:
    """One column: dtype, unit ('' when dimensionless), meaning, fixed inner shape per row."""

    dtype: np.dtype
    unit: str
    doc: str
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class CollectionSpec:
    """One collection of the schema: its columns and whether it is event-level."""

    name: str
    columns: dict[str, ColumnSpec]
    per_event: bool = False
    doc: str = ""


def _c(dtype: str, unit: str, doc: str, shape: tuple[int, ...] = ()) -> ColumnSpec:
    return ColumnSpec(np.dtype(dtype), unit, doc, shape)


#: What ``hltemu generate`` writes and ``hltemu run`` reads.
INPUT_SCHEMA: dict[str, CollectionSpec] = {
    EVENT: CollectionSpec(
        EVENT,
        {
            "event": _c("int64", "", "event number within the generated run"),
            "n_pileup": _c("int32", "", "number of pileup interactions overlaid"),
            "pv_z": _c("float32", "cm", "z of the hard-scatter vertex"),
        },
        per_event=True,
        doc="event-level information",
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
            branch = f"{cname}_{col}"
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
