"""ROOT input and output: the schemas, chunked reading into EventBatches, writing products.

Schema conventions (NanoAOD style, one TTree ``Events``, one entry per event):

* a jagged collection ``C`` with column ``x`` is the branch ``C_x`` with the counter ``nC``;
* an event-level collection (``Collection.per_event``) ``C`` with column ``x`` is the scalar
  branch ``C_x``;
* a column with a fixed inner shape (a pixel-charge pad per hit) is stored flattened, see
  :class:`ColumnSpec`.

Modules of this package (every public name is re-exported here): :mod:`~hltemu.io.schema`
(the declarations, :func:`describe_schema`), :mod:`~hltemu.io.errors`,
:mod:`~hltemu.io.layout` (validation: opening a file and finding its collections;
:func:`read_metadata`, :func:`count_events`, :func:`common_collections`,
:func:`counts_only_collections`),
:mod:`~hltemu.io.reader` (reading: :func:`iterate_batches`, :func:`read_collections`),
:mod:`~hltemu.io.writer` (writing: :class:`OutputWriter`, :func:`parse_compression`) and
:mod:`~hltemu.io.provenance`
(the provenance object: :func:`read_provenance`, :func:`provenance_header`,
:func:`input_provenance`, :func:`event_id_summary`, :func:`left_out_hint`, and the mean
pileup a file was made with, :func:`input_pileup`).

How branches map to collections
-------------------------------
The reader works on files hltemu did not write (e.g. CMS NanoAOD), by these rules:

* a jagged branch ``C_x`` counted by ``nC`` is column ``x`` of the jagged collection ``C``
  (``C`` is the counter's name without its leading ``n``; ``x`` may contain ``_``);
* a jagged branch ``C`` with no ``_``, counted by ``nC`` (NanoAOD's ``LHEPdfWeight``,
  ``PSWeight``), is a one-column collection ``C`` whose column is ``"value"``;
* a jagged branch ``C_x`` counted by its own counter ``nC_x``, where ``C`` is a jagged
  collection, is the column ``x`` of ``C`` stored flattened: ``prod(shape)`` values per row of
  ``C``, the inner ``shape`` coming from the file's hltemu metadata or the schema's
  :attr:`ColumnSpec.shape` (``()`` when neither knows it);
* a scalar (or fixed-size array) branch ``C_x`` with no counter ``nC`` is column ``x`` of the
  event-level collection ``C`` (NanoAOD's ``HLT_*`` trigger bits become the collection
  ``HLT``, ``PV_*`` the collection ``PV``); the name is split at its first ``_``;
* the scalar branches ``run``, ``luminosityBlock`` and ``event`` (NanoAOD's event
  identifiers, which ``hltemu generate`` writes too) are the columns of those names of the
  event-level collection ``Event``, beside its ``Event_*`` branches; a legacy ``Event_event``
  is its column ``event`` (a file with both ``event`` and ``Event_event`` is refused);
* other branches with no ``_`` that are not counters (NanoAOD's ``genWeight``,
  ``fixedGridRhoFastjetAll``) belong to no collection and are not read; so are branches of
  types other than numbers and booleans (strings, objects);
* a branch that breaks these rules for a collection (a scalar ``C_x`` beside a counter ``nC``,
  a jagged ``C_x`` counted by something other than ``nC``) makes that collection unreadable,
  with an :class:`InputError` naming the branch when the collection is asked for.

Files written by :class:`OutputWriter` carry a ``hltemu_metadata`` object (a ``TObjString``
holding JSON: the hltemu version, the tree, every collection with its columns, dtypes and
inner shapes); the reader uses it to resolve collection names that contain ``_`` and inner
shapes of N-D columns of collections not in the schema.  They may also carry a
``hltemu_provenance`` object (JSON: how the file was made, :mod:`~hltemu.io.provenance`;
:func:`read_provenance`).  The event identifiers and how ``hltemu generate`` numbers events
are described in :mod:`~hltemu.io.schema`.

RNTuples (what ``f[name] = {...}`` writes with uproot >= 5.7) are read too, with the same
rules, where a jagged field needs no counter and a field ``C`` of type ``var * {x, y, ...}``
is the jagged collection ``C``.  :class:`OutputWriter` always writes a TTree.
"""

from hltemu.io.errors import InputError, OutputError
from hltemu.io.layout import (
    Paths,
    common_collections,
    count_events,
    counts_only_collections,
    read_metadata,
)
from hltemu.io.provenance import (
    PROVENANCE_FORMAT,
    command_line,
    dumps_provenance,
    event_id_summary,
    input_pileup,
    input_provenance,
    left_out_hint,
    package_versions,
    provenance_header,
    provenance_pileup,
    read_provenance,
)
from hltemu.io.reader import iterate_batches, read_collections, reading_notes
from hltemu.io.schema import (
    EVENT,
    EVENT_ID_COLUMNS,
    INPUT_SCHEMA,
    MAX_EVENT,
    MAX_RUN,
    METADATA_KEY,
    PIXEL_PAD_SHAPE,
    PROVENANCE_KEY,
    TREE_NAME,
    CollectionSpec,
    ColumnSpec,
    branch_name,
    describe_schema,
)
from hltemu.io.writer import DEFAULT_COMPRESSION, OutputWriter, parse_compression

__all__ = [
    "EVENT",
    "EVENT_ID_COLUMNS",
    "INPUT_SCHEMA",
    "MAX_EVENT",
    "MAX_RUN",
    "METADATA_KEY",
    "PIXEL_PAD_SHAPE",
    "PROVENANCE_FORMAT",
    "PROVENANCE_KEY",
    "TREE_NAME",
    "CollectionSpec",
    "ColumnSpec",
    "InputError",
    "OutputError",
    "OutputWriter",
    "DEFAULT_COMPRESSION",
    "parse_compression",
    "Paths",
    "branch_name",
    "command_line",
    "common_collections",
    "counts_only_collections",
    "count_events",
    "describe_schema",
    "dumps_provenance",
    "event_id_summary",
    "left_out_hint",
    "input_pileup",
    "input_provenance",
    "iterate_batches",
    "package_versions",
    "provenance_header",
    "provenance_pileup",
    "reading_notes",
    "read_collections",
    "read_metadata",
    "read_provenance",
]
