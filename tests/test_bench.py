"""``hltemu bench``: the JSON (layout and sane values), the tiled batch, the pileup check,
progress on or off, and clear errors for bad options (reference and cpu, small batches; no
test looks at how long anything took)."""

from __future__ import annotations

import io as stdio
import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner
from stage_fixtures import cell_sum_stage  # noqa: F401

from hltemu import bench, io
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.cli import cli
from hltemu.outputs import temporaries

N_SOURCE = 23  # events in the test file


def _write(path, n_events=N_SOURCE, seed=5, first_event=1, pileup=50.0, provenance=True,
           n_pileup=True):
    """A small input file: CaloCell (for the test stage ``cell_sum``) and Event (identifiers,
    ``n_pileup`` when asked), with a provenance recording ``pileup`` when asked."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 40, size=n_events)
    n = int(counts.sum())
    cells = Collection.from_counts(counts, {
        "id": rng.integers(0, 1000, size=n).astype(np.int32),
        "energy": rng.normal(0.3, 1.0, size=n).astype(np.float32),
        "true_energy": rng.random(n).astype(np.float32),
    })
    ev = {"run": np.full(n_events, 7, dtype=np.uint32),
          "luminosityBlock": np.ones(n_events, dtype=np.uint32),
          "event": np.arange(first_event, first_event + n_events, dtype=np.uint64),
          "pv_z": rng.normal(0, 4, size=n_events).astype(np.float32)}
    if n_pileup:
        ev["n_pileup"] = rng.poisson(pileup, size=n_events).astype(np.int32)
    batch = EventBatch(get_backend("reference"), n_events,
                       {io.EVENT: Collection.event_level(ev), "CaloCell": cells})
    prov = None
    if provenance:
        prov = io.provenance_header("generate")
        prov["pileup"] = {"mean_requested": pileup}
    with io.OutputWriter(path, provenance=prov) as w:
        w.write(batch, [io.EVENT, "CaloCell"])
    return batch


@pytest.fixture
def pu50(tmp_path):
    path = tmp_path / "pu50.root"
    _write(path)
    return path


def _bench(*args):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["bench", *map(str, args)])


# -- the JSON ----------------------------------------------------------------------------------
def test_json_layout_and_values(tmp_path, pu50, cell_sum_stage):  # noqa: F811
    out = tmp_path / "b.json"
    r = _bench(pu50, "--backends", "reference,cpu", "-s", "cell_sum", "--events", 30,
               "--pileup", 50, "--repeat", 4, "--warmups", 1, "--json", out, "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"json: {out}" in r.output
    assert temporaries(out) == []
    d = json.loads(out.read_text())
    assert set(d) == {"format", "created_utc", "command", "machine", "versions", "inputs",
                      "pileup", "batch", "tiling", "stages", "config", "repeat", "warmups",
                      "baseline", "statistic", "backends"}
    assert d["format"] == bench.BENCH_FORMAT
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["created_utc"])
    assert isinstance(d["command"], str) and d["command"]  # sys.argv: here pytest's
    m = d["machine"]
    assert {"cpu_model", "cpu_count", "cpus_usable", "numba_threads", "memory_gib", "gpu",
            "platform"} <= set(m)
    assert m["cpu_count"] >= 1 and isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert {"python", "numpy", "numba"} <= set(d["versions"])
    [inp] = d["inputs"]
    assert inp["file"] == str(pu50) and inp["entries"] == N_SOURCE
    assert inp["pileup"] == 50.0 and inp["pileup_source"] == "provenance"
    assert inp["provenance"]["pileup"] == {"mean_requested": 50.0}
    assert d["pileup"] == {"requested": 50.0, "inputs": 50.0}
    assert d["batch"] == {"events": 30, "source_events": N_SOURCE, "tiled": True}
    assert d["tiling"]["events"] == 30 and d["tiling"]["source_events"] == N_SOURCE
    assert d["stages"] == ["cell_sum"] and "cell_sum" in d["config"]
    assert (d["repeat"], d["warmups"], d["baseline"]) == (4, 1, "reference")
    assert set(d["backends"]) == {"reference", "cpu"}

    base = d["backends"]["reference"]
    for name, b in d["backends"].items():
        assert b["device"] and b["upload_seconds"] >= 0
        assert len(b["warmup_seconds"]) == 1 and b["warmup_seconds"][0] > 0
        assert set(b["stages"]) == {"cell_sum", "total"}
        rows = {**b["stages"], "wall": b["wall"]}
        for row_name, row in rows.items():
            assert len(row["seconds"]) == 4 and all(s > 0 for s in row["seconds"])
            s = row["seconds_per_event"]
            per_event = sorted(x / 30 for x in row["seconds"])
            assert s["min"] == pytest.approx(per_event[0])
            assert s["max"] == pytest.approx(per_event[-1])
            assert s["median"] == pytest.approx((per_event[1] + per_event[2]) / 2)
            assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
            assert s["iqr"] == pytest.approx(s["q3"] - s["q1"]) and s["iqr"] >= 0
            assert 0 <= s["mad"] <= s["max"] - s["min"]
            assert row["events_per_second"] == pytest.approx(1 / s["median"])
            assert row["events_per_second_best"] == pytest.approx(1 / s["min"])
            ref = base["stages"][row_name] if row_name != "wall" else base["wall"]
            ref_s = ref["seconds_per_event"]
            assert row["speedup"] == pytest.approx(ref_s["median"] / s["median"])
            assert row["speedup_best"] == pytest.approx(ref_s["min"] / s["min"])
            if name == "reference":
                assert row["speedup"] == 1.0 and row["speedup_best"] == 1.0
        # one stage: its total is its time, repeat by repeat; the wall time holds it
        assert b["stages"]["total"]["seconds"] == b["stages"]["cell_sum"]["seconds"]
        assert all(w >= t for w, t in zip(b["wall"]["seconds"], b["stages"]["total"]["seconds"],
                                          strict=True))


def test_printed_tables_show_median_spread_and_the_tiling(pu50, cell_sum_stage):  # noqa: F811
    r = _bench(pu50, "--backends", "reference,cpu", "-s", "cell_sum", "-n", 50, "--repeat", 3,
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"batch: 50 events tiled from the {N_SOURCE} events of pu50.root (3 copies)" \
        in r.output
    assert "hltemu bench: 50 events, best of 3" in r.output
    header = next(line for line in r.output.splitlines()
                  if line.split()[:2] == ["stage", "backend"])
    assert header.split() == ["stage", "backend", "median", "min", "max", "IQR", "events/s",
                              "speed-up"]
    rows = [line.split() for line in r.output.splitlines()
            if line.split()[:1] in (["cell_sum"], ["total"], ["cpu"])]
    cells = [row[-6:] for row in rows if len(row) >= 7]
    assert len(cells) == 4  # cell_sum and total, on reference and cpu
    for median, lo, hi, iqr, eps, speedup in cells:
        assert float(lo) <= float(median) <= float(hi) and float(iqr) >= 0
        assert float(eps.replace(",", "")) > 0 and speedup.endswith("x")


# -- the batch ---------------------------------------------------------------------------------
def test_tiled_batch_repeats_the_events_in_order(pu50):
    src = _write(pu50.with_name("again.root"))
    batch, tiling = bench.read_batch([str(pu50)], ["CaloCell"], 50)
    assert batch.n_events == 50
    assert tiling == {"source_events": N_SOURCE, "events": 50, "copies": 3, "full_copies": 2,
                      "partial_copy_events": 4, "how": tiling["how"]}
    assert "repeated in order" in tiling["how"]
    order = np.arange(50) % N_SOURCE
    ids = np.asarray(src[io.EVENT]["event"])
    np.testing.assert_array_equal(np.asarray(batch[io.EVENT]["event"]), ids[order])
    np.testing.assert_array_equal(np.asarray(batch[io.EVENT]["n_pileup"]),
                                  np.asarray(src[io.EVENT]["n_pileup"])[order])
    cells, src_cells = batch["CaloCell"], src["CaloCell"]
    np.testing.assert_array_equal(np.asarray(cells.counts), np.asarray(src_cells.counts)[order])
    for i in (0, N_SOURCE - 1, N_SOURCE, 2 * N_SOURCE + 3, 49):
        for col in ("id", "energy"):
            np.testing.assert_array_equal(cells.event(i)[col], src_cells.event(i % N_SOURCE)[col])
    cells.validate()


def test_batch_not_tiled_when_the_files_hold_enough(tmp_path):
    a, b = tmp_path / "a.root", tmp_path / "b.root"
    ea = _write(a, n_events=6, seed=1, first_event=1)
    eb = _write(b, n_events=7, seed=2, first_event=100)
    batch, tiling = bench.read_batch([str(a), str(b)], ["CaloCell"], 10)
    assert tiling is None and batch.n_events == 10  # across both files, in order
    np.testing.assert_array_equal(np.asarray(batch[io.EVENT]["event"]),
                                  [1, 2, 3, 4, 5, 6, 100, 101, 102, 103])
    assert batch["CaloCell"].size == int(np.asarray(ea["CaloCell"].counts).sum()
                                         + np.asarray(eb["CaloCell"].counts)[:4].sum())
    # fewer events in both files than asked: tiled over all of them
    batch, tiling = bench.read_batch([str(a), str(b)], ["CaloCell"], 20)
    assert tiling["source_events"] == 13 and batch.n_events == 20
    np.testing.assert_array_equal(np.asarray(batch[io.EVENT]["event"])[13:],
                                  [1, 2, 3, 4, 5, 6, 100])
    # exactly as many: the file itself
    batch, tiling = bench.read_batch([str(a)], ["CaloCell"], 6)
    assert tiling is None and batch.n_events == 6


def test_no_tile_refuses_a_short_input(pu50, cell_sum_stage):  # noqa: F811
    r = _bench(pu50, "--backends", "reference", "-s", "cell_sum", "-n", 30, "--no-tile",
               "--no-progress")
    assert r.exit_code == 1
    assert f"{pu50} holds only {N_SOURCE} events, fewer than --events 30" in r.output
    assert "Traceback" not in r.output


# -- pileup ------------------------------------------------------------------------------------
def test_pileup_mismatch_names_the_file_and_both_values(tmp_path, pu50,
                                                        cell_sum_stage):  # noqa: F811
    out = tmp_path / "b.json"
    r = _bench(pu50, "--backends", "reference", "-s", "cell_sum", "-n", 5, "--pileup", 200,
               "--json", out)
    assert r.exit_code == 1
    assert (f"input file {pu50} has pileup 50 (its provenance), not --pileup 200"
            in r.output)
    assert "Traceback" not in r.output
    assert not out.exists() and temporaries(out) == []  # nothing written


def test_pileup_from_the_n_pileup_branch_or_none(tmp_path, cell_sum_stage):  # noqa: F811
    no_prov = tmp_path / "noprov.root"
    _write(no_prov, provenance=False, pileup=50.0)
    mu = io.input_pileup(no_prov)["mu"]
    assert abs(mu - 50) < 5
    r = _bench(no_prov, "--backends", "reference", "-s", "cell_sum", "-n", 5, "--pileup", 50,
               "--no-progress")
    assert r.exit_code == 0, r.output  # the mean of Event_n_pileup agrees within its error
    r = _bench(no_prov, "--backends", "reference", "-s", "cell_sum", "-n", 5, "--pileup", 200)
    assert r.exit_code == 1
    assert (f"input file {no_prov} has pileup {mu:g} (the mean of Event_n_pileup over "
            f"{N_SOURCE} events), not --pileup 200") in r.output
    nothing = tmp_path / "nothing.root"
    _write(nothing, provenance=False, n_pileup=False)
    r = _bench(nothing, "--backends", "reference", "-s", "cell_sum", "-n", 5, "--pileup", 0)
    assert r.exit_code == 1
    assert f"--pileup 0: input file {nothing} does not record its pileup" in r.output
    r = _bench(nothing, "--backends", "reference", "-s", "cell_sum", "-n", 5, "--no-progress")
    assert r.exit_code == 0, r.output  # without --pileup nothing is checked


def test_builtin_sample_is_the_default_input(monkeypatch, tmp_path):
    """No FILES: the built-in sample (pileup 50), as `hltemu run` does; --pileup checks it."""
    seen = {}

    def fake(files, backends, **kw):
        seen.update(files=files, **kw)
        raise bench.BenchError("stop here")

    monkeypatch.setattr(bench, "run_bench", fake)
    r = _bench("--backends", "reference", "--pileup", 50, "-n", 500)
    assert r.exit_code == 1 and "stop here" in r.output
    [sample] = seen["files"]
    assert sample.endswith("sample.root") and seen["n_events"] == 500
    assert seen["pileup"] == 50.0 and seen["tile"] is True
    assert io.input_pileup(sample)["mu"] == 50.0
    with pytest.raises(bench.BenchError, match=r"sample\.root has pileup 50 .*not --pileup 200"):
        bench.input_pileups([sample], 200.0)


# -- progress ----------------------------------------------------------------------------------
def test_progress_on_or_off_gives_the_same_results(pu50, cell_sum_stage):  # noqa: F811
    from rich.console import Console

    drawn = stdio.StringIO()
    results = {}
    for progress in (False, True):
        results[progress] = bench.run_bench(
            [str(pu50)], "reference,cpu", ["cell_sum"], n_events=30, repeat=2, warmups=2,
            progress=progress, console=Console(file=drawn, width=120))
    assert "8/8" in drawn.getvalue()  # 2 backends x (2 warm-ups + 2 repeats), then closed

    def shape(value):
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()
                    if k not in ("created_utc", "command", "machine", "versions")}
        if isinstance(value, list):
            return [shape(v) for v in value]
        return type(value).__name__ if isinstance(value, float) else value

    off, on = (results[p].to_dict() for p in (False, True))
    assert shape(off) == shape(on)  # same keys, stages, batch, tiling; only times differ
    assert off["tiling"] == on["tiling"] and off["batch"] == on["batch"]
    for d in (off, on):
        for b in d["backends"].values():
            assert all(len(r["seconds"]) == 2 for r in b["stages"].values())
            assert len(b["warmup_seconds"]) == 2


def test_progress_bar_goes_to_stderr(pu50, cell_sum_stage):  # noqa: F811
    r = _bench(pu50, "--backends", "reference", "-s", "cell_sum", "-n", 5, "--repeat", 2)
    assert r.exit_code == 0, r.output
    assert "warm-ups and repeats" in r.stderr and "3/3" in r.stderr
    assert "warm-ups and repeats" not in r.stdout
    r = _bench(pu50, "--backends", "reference", "-s", "cell_sum", "-n", 5, "--repeat", 2,
               "--no-progress")
    assert r.exit_code == 0 and "warm-ups and repeats" not in r.output


# -- bad options -------------------------------------------------------------------------------
@pytest.mark.parametrize("args,code,message", [
    (["--backends", ""], 1, "give at least one backend to compare"),
    (["--backends", " , "], 1, "give at least one backend to compare"),
    (["--backends", "reference,gpu"], 1, "unknown backend 'gpu'; choose one of"),
    (["--backends", "cpu,reference,cpu"], 1, "backend 'cpu' is given twice in --backends"),
    (["--repeat", "0"], 2, "Invalid value for '--repeat'"),
    (["--events", "0"], 2, "Invalid value for '--events'"),
    (["--warmups", "-1"], 2, "Invalid value for '--warmups'"),
    (["--pileup", "-5"], 2, "Invalid value for '--pileup'"),
    (["--pileup", "fifty"], 2, "Invalid value for '--pileup'"),
    (["-s", "nosuchstage"], 1, "nosuchstage"),
])
def test_bad_options_error_clearly(pu50, cell_sum_stage, args, code, message):  # noqa: F811
    r = _bench(pu50, "-s", "cell_sum", "-n", 3, "--no-progress", *args)
    assert r.exit_code == code, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_json_path_is_checked_before_any_work(tmp_path, pu50, cell_sum_stage,  # noqa: F811
                                              monkeypatch):
    def never(*a, **k):
        raise AssertionError("timed before the JSON path was checked")

    monkeypatch.setattr(bench, "time_backend", never)
    r = _bench(pu50, "-s", "cell_sum", "--json", pu50)
    assert r.exit_code == 1 and "it is the same file as input" in r.output
    missing = tmp_path / "no" / "such" / "dir" / "b.json"
    r = _bench(pu50, "-s", "cell_sum", "--json", missing)
    assert r.exit_code == 1 and "does not exist" in r.output and str(missing) in r.output
    assert pu50.stat().st_size > 0


def test_spread_of_few_values():
    s = bench.spread([3.0])
    assert s == {"median": 3.0, "min": 3.0, "max": 3.0, "q1": 3.0, "q3": 3.0, "iqr": 0.0,
                 "mad": 0.0}
    s = bench.spread([4.0, 1.0, 2.0, 100.0])
    assert (s["min"], s["median"], s["max"]) == (1.0, 3.0, 100.0)
    assert s["q1"] == 1.75 and s["q3"] == 28.0 and s["mad"] == 1.5
    assert all(math.isfinite(v) for v in s.values())
