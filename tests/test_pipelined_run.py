"""A pipelined run (reading ahead and writing behind in threads) writes what a run in sequence
writes; errors in its threads reach the caller; the default output keeps only the counts of
the doublet collections, and what needs their columns is refused with the --keep to use."""

from __future__ import annotations

import threading

import awkward as ak
import numpy as np
import pytest
import uproot

from hltemu import io
from hltemu.cli import builtin_sample
from hltemu.pipeline import PipelineError, output_products, plan, registered_stages, run_files


def _tree(path):
    with uproot.open(path) as f:
        t = f[io.TREE_NAME]
        return {k: t[k].array(library="ak") for k in t.keys()}


def _assert_same_trees(a, b):
    ta, tb = _tree(a), _tree(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ak.all(ta[k] == tb[k], axis=None), k


@pytest.mark.parametrize("backend, stages, batch_size", [
    ("cpu", None, 3),
    ("reference", ["topocluster", "antikt", "rho", "jec", "genjets"], 2),
])
def test_pipelined_output_is_the_sequential_output(tmp_path, backend, stages, batch_size):
    """Every branch of every event, in order, with everything written (--keep '*'); the
    report's events and per-stage calls alike."""
    outs, reports = {}, {}
    for pipelined in (False, True):
        outs[pipelined] = tmp_path / f"o{int(pipelined)}.root"
        reports[pipelined] = run_files([builtin_sample()], backend=backend, stages=stages,
                                       batch_size=batch_size, max_events=7,
                                       output=outs[pipelined], keep=("*",),
                                       pipeline=pipelined)
    _assert_same_trees(outs[False], outs[True])
    for name, s in reports[False].stages.items():
        assert reports[True].stages[name].calls == s.calls
        assert reports[True].stages[name].events == s.events
    assert reports[True].events == reports[False].events == 7
    assert reports[True].counters == reports[False].counters


def _threads() -> set[str]:
    return {t.name.split("_")[0] for t in threading.enumerate() if t.name.startswith("hltemu-")}


def test_error_while_reading_ahead_reaches_the_caller(tmp_path, monkeypatch):
    """An error raised in the reading thread (here on the third batch) is raised by run_files;
    no output is left and the threads are gone."""
    real = io.iterate_batches

    def failing(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise io.InputError("batch 2 is broken")
            yield batch

    monkeypatch.setattr(io, "iterate_batches", failing)
    out = tmp_path / "o.root"
    with pytest.raises(io.InputError, match="batch 2 is broken"):
        run_files([builtin_sample()], backend="cpu", stages=["rho"], batch_size=2, output=out)
    assert not out.exists() and not _threads()


def test_error_while_writing_behind_reaches_the_caller(tmp_path, monkeypatch):
    real = io.OutputWriter.write
    calls = []

    def failing(self, batch, names=None, counts_only=()):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise io.OutputError("disk full")
        return real(self, batch, names, counts_only)

    monkeypatch.setattr(io.OutputWriter, "write", failing)
    out = tmp_path / "o.root"
    with pytest.raises(io.OutputError, match="disk full"):
        run_files([builtin_sample()], backend="cpu", stages=["rho"], batch_size=2, output=out)
    assert calls[0].startswith("hltemu-write")  # written behind, in its thread
    assert not out.exists() and not _threads()


def test_default_output_holds_the_doublet_counts_only(tmp_path):
    """The doublet collections are written as per-event counts (``nC``, no column) unless a
    --keep names them; the counts are those of the whole collections."""
    stages = ["doublets", "rho"]
    small, whole = tmp_path / "s.root", tmp_path / "w.root"
    rep = run_files([builtin_sample()], backend="cpu", stages=stages, max_events=4,
                    output=small)
    assert rep.plan["counts_only"] == ["doublets"]
    run_files([builtin_sample()], backend="cpu", stages=stages, max_events=4, output=whole,
              keep=("doublets",))
    with uproot.open(small) as f:
        keys = f[io.TREE_NAME].keys()
    assert "ndoublets" in keys and not [k for k in keys if k.startswith("doublets_")]
    assert io.counts_only_collections([small]) == ["doublets"]
    assert io.counts_only_collections([whole]) == []
    a = io.read_collections(small, ["doublets"])["doublets"]
    b = io.read_collections(whole, ["doublets"])["doublets"]
    assert a.columns == {} and len(b.columns) > 0
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.offsets[-1] > 1000  # the sample has doublets to count


def test_output_products_counts_only_and_keep():
    chain = [registered_stages()[n] for n in ("doublets", "doublet_cnn", "rho")]
    written, counts = output_products(chain)
    assert written == ["doublets", "filtered_doublets", "rho"]
    assert set(counts) <= {"doublets", "filtered_doublets"} and "doublets" in counts
    assert output_products(chain, keep=("*",))[1] == []
    assert output_products(chain, keep=("doublets",))[1] == [c for c in counts
                                                              if c != "doublets"]
    assert output_products(chain, drop=("doublets",)) == (
        ["filtered_doublets", "rho"], [c for c in counts if c != "doublets"])
    with pytest.raises(PipelineError, match="--keep 'nope' matches no collection"):
        output_products(chain, keep=("nope",))


def test_a_stage_needing_columns_of_counts_only_input_is_refused(tmp_path):
    """pixeltracks reads the doublets' hit rows: on a file that holds only their counts the
    planner names the file, the collection and the --keep that writes them whole (explicit
    chain: an error; default chain: the stage skipped with that reason)."""
    out = tmp_path / "s.root"
    run_files([builtin_sample()], backend="cpu", stages=["doublets"], max_events=2, output=out)
    merged = tmp_path / "m.root"
    batch = next(io.iterate_batches([builtin_sample()], ["PixelHit"], batch_size=2))
    batch.add("doublets", io.read_collections(out, ["doublets"])["doublets"])
    with io.OutputWriter(merged) as w:
        w.write(batch, counts_only=["doublets"])
    available = io.common_collections([merged])
    with pytest.raises(PipelineError, match=(
            rf"stage 'pixeltracks' needs the columns of collection 'doublets', of which "
            rf"{merged} holds only the per-event counts .*--keep doublets")):
        plan(["pixeltracks"], available, None, [str(merged)])
    auto = plan(None, available, None, [str(merged)])
    assert "doublets" in [s.name for s in auto.stages]  # made again from PixelHit: fine
    # with the doublets stage run first its product replaces the input's counts
    assert [s.name for s in plan(["doublets", "pixeltracks"], available, None,
                                 [str(merged)]).stages] == ["doublets", "pixeltracks"]


@pytest.mark.parametrize("spec, fcompress", [("zstd:1", 501), ("zstd", 501), ("zlib:4", 104),
                                             ("lz4:4", 404), ("lzma:9", 209), ("none", 100)])
def test_output_compression(tmp_path, spec, fcompress):
    """The file's compression setting (ROOT's algorithm * 100 + level) is the one asked for,
    and the products read back the same."""
    out = tmp_path / "o.root"
    run_files([builtin_sample()], backend="cpu", stages=["rho"], max_events=3, output=out,
              compression=spec)
    with uproot.open(out) as f:
        assert f.file.fCompress == fcompress
    ref = tmp_path / "r.root"
    run_files([builtin_sample()], backend="cpu", stages=["rho"], max_events=3, output=ref)
    _assert_same_trees(out, ref)


def test_default_compression_is_zstd_level_1():
    assert io.DEFAULT_COMPRESSION == "zstd:1"
    import inspect

    from hltemu import cli, scaleout

    assert inspect.signature(run_files).parameters["compression"].default == "zstd:1"
    assert inspect.signature(scaleout.run_files_dask).parameters["compression"].default == \
        "zstd:1"
    opt = next(p for p in cli.run.params if p.name == "compression")
    assert opt.default == io.DEFAULT_COMPRESSION


@pytest.mark.parametrize("spec, message", [
    ("gzip", "unknown compression 'gzip'"), ("zlib:0", "the level must be an integer 1-9"),
    ("zstd:23", "the level must be"), ("lzma:x", "got 'x'")])
def test_bad_compression_fails_before_reading(tmp_path, spec, message):
    out = tmp_path / "o.root"
    with pytest.raises(io.OutputError, match=message):
        run_files([tmp_path / "missing.root"], backend="cpu", output=out, compression=spec)
    assert not out.exists()


def test_trigger_rerun_on_the_default_output_decides_alike(tmp_path):
    """The default output holds what a --stages trigger rerun reads (the jets, the doublets'
    counts): its decisions are the run's own, the doublet-multiplicity path included."""
    first, rerun = tmp_path / "a.root", tmp_path / "b.root"
    rep = run_files([builtin_sample()], backend="cpu", max_events=6, batch_size=3,
                    output=first)
    assert set(rep.plan["counts_only"]) == {"doublets", "filtered_doublets"}
    run_files([first], backend="cpu", stages=["trigger"], output=rerun)
    a, b = _tree(first), _tree(rerun)
    trig = [k for k in a if k.startswith("trigger")]
    assert any("PixelDoublets" in k for k in trig)
    for k in trig:
        assert ak.all(a[k] == b[k]), k


def test_what_a_run_left_out_is_named_with_the_keep_that_restores_it(tmp_path):
    out = tmp_path / "o.root"
    run_files([builtin_sample()], backend="cpu", stages=["doublets", "topocluster", "antikt"],
              max_events=2, output=out, drop=("jets", "cluster_jet"))
    assert io.left_out_hint(out, ["jets"]) == (
        "the run that wrote it left out 'jets' (its --drop): rerun it with --keep jets")
    assert io.left_out_hint(out, ["doublets"]) == (
        "it wrote only the per-event counts of 'doublets': rerun it with --keep doublets")
    assert io.left_out_hint(out, ["clusters"]) == ""
    assert io.left_out_hint(builtin_sample(), ["jets"]) == ""  # not a run's output
    with pytest.raises(PipelineError, match=(
            rf"stage 'jec' needs collection 'jets', .*; {out}: the run that wrote it left out "
            r"'jets' \(its --drop\): rerun it with --keep jets")):
        run_files([out], backend="cpu", stages=["jec"], output=tmp_path / "x.root")
