"""The command line end to end: info, run on a small ROOT file written here, errors, bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from stage_fixtures import cell_sum_stage  # noqa: F401

from hltemu import io
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.cli import cli


def _write_small_file(path, n_events=23, seed=5):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 40, size=n_events)
    n = int(counts.sum())
    cells = Collection.from_counts(
        counts,
        {
            "id": rng.integers(0, 1000, size=n).astype(np.int32),
            "energy": rng.normal(0.3, 1.0, size=n).astype(np.float32),
            "true_energy": rng.random(n).astype(np.float32),
        },
    )
    event = Collection.event_level(
        {
            "event": np.arange(n_events, dtype=np.int64),
            "n_pileup": rng.poisson(50, size=n_events).astype(np.int32),
            "pv_z": rng.normal(0, 4, size=n_events).astype(np.float32),
        }
    )
    batch = EventBatch(get_backend("reference"), n_events, {io.EVENT: event, "CaloCell": cells})
    with io.OutputWriter(path) as w:
        w.write(batch, [io.EVENT, "CaloCell"])
    return batch


def _table_rows(output: str) -> dict[int, list[list[str]]]:
    """The body rows of the rich tables in ``output``, by number of columns (the info tables
    have 2, 3, 5 and 4); cells stripped."""
    rows: dict[int, list[list[str]]] = {}
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("│") and line.endswith("│"):
            cells = [c.strip() for c in line[1:-1].split("│")]
            rows.setdefault(len(cells), []).append(cells)
    return rows


def test_info_lists_backends_and_stages(tmp_path):
    """Every row of `hltemu info`: versions, each backend's usability as usable_backends() says
    and what auto picks, the registered stages in chain order with their needs, adds,
    backends and doc, and every setting of every stage (defaults, then a --config file's)."""
    import platform

    from hltemu import __version__
    from hltemu.backends import usable_backends
    from hltemu.config import HLTConfig, describe
    from hltemu.pipeline import default_config, load_config, registered_stages

    runner = CliRunner(env={"COLUMNS": "400"})  # wide enough that no cell wraps
    result = runner.invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    rows = _table_rows(result.output)
    versions = dict(rows[2])
    assert versions["hltemu"] == __version__ and versions["numpy"] == np.__version__
    assert versions["python"] == platform.python_version()
    assert versions["nvtx ranges"] in ("on", "off (pip install 'hltemu[nvtx]')")
    want = [[name, "yes" if ok else "no", why] for name, (ok, why) in usable_backends().items()]
    want.append(["auto", "yes", get_backend("auto").name])
    assert rows[3] == want
    assert [r[0] for r in rows[3]] == ["reference", "cpu", "cuda", "auto"]
    stages = registered_stages()
    assert rows[5] == [[name, ", ".join(st.needs_for()), ", ".join(st.adds),
                        ", ".join(sorted(st.implementations)), st.doc]
                       for name, st in stages.items()]
    order = [r[0] for r in rows[5]]
    assert order.index("antikt") < order.index("jec") < order.index("trigger")
    assert order.index("rho") < order.index("jec")

    def settings(cfg: HLTConfig) -> list[list[str]]:
        return [[name if i == 0 else "", key, str(value), unit]
                for name in stages for i, (key, value, unit, _) in enumerate(describe(cfg[name]))]

    assert rows[4] == settings(default_config())
    toml = tmp_path / "c.toml"
    toml.write_text("[antikt]\npt_min = 12.5\n[rho]\ngrid_spacing = 0.8\n")
    result = runner.invoke(cli, ["info", "--config", str(toml)])
    assert result.exit_code == 0, result.output
    shown = _table_rows(result.output)[4]
    assert shown == settings(load_config(toml))
    assert ["", "pt_min", "12.5", "GeV"] in shown and ["", "grid_spacing", "0.8", ""] in shown
    assert shown != rows[4]


@pytest.mark.parametrize("backend_name", ["reference", "cpu", "cuda"])
def test_run_end_to_end(tmp_path, cell_sum_stage, backend_name):  # noqa: F811
    src = tmp_path / "in.root"
    batch = _write_small_file(src)
    out, rep = tmp_path / "out.root", tmp_path / "report.json"
    args = ["run", str(src), "--backend", backend_name, "--stages", "cell_sum", "--batch-size", "7",
            "--output", str(out), "--report", str(rep), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "cell_sum" in result.output and "total" in result.output
    report = json.loads(rep.read_text())
    assert report["events"] == 23 and report["backend"] == backend_name
    assert report["stages"]["cell_sum"]["calls"] == 4  # 7 + 7 + 7 + 2 events
    assert report["stages"]["cell_sum"]["events"] == 23
    products = io.read_collections(out)
    np.testing.assert_array_equal(products[io.EVENT]["event"], np.arange(23))
    cells = batch["CaloCell"]
    energies = [cells.event(i)["energy"].astype(np.float64) for i in range(23)]
    expect = [e[e > 0.0].sum() for e in energies]  # cell_sum's default threshold is 0 GeV
    np.testing.assert_allclose(products["cell_sum"]["sum"], expect, rtol=1e-6)


def test_run_max_events(tmp_path, cell_sum_stage):  # noqa: F811
    src = tmp_path / "in.root"
    _write_small_file(src)
    out, rep = tmp_path / "out.root", tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["run", str(src), "-b", "cpu", "-s", "cell_sum", "-n", "10",
                                      "-o", str(out), "-r", str(rep), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(rep.read_text())["events"] == 10
    assert io.read_collections(out)["cell_sum"].n_events == 10


def test_run_errors_are_one_line_messages(tmp_path, cell_sum_stage):  # noqa: F811
    runner = CliRunner()
    missing = tmp_path / "missing.root"
    r = runner.invoke(cli, ["run", str(missing), "--no-progress", "-o", str(tmp_path / "o.root")])
    assert r.exit_code == 1 and "missing.root" in r.output and "Traceback" not in r.output
    src = tmp_path / "in.root"
    _write_small_file(src)
    r = runner.invoke(cli, ["run", str(src), "-s", "cell_sum,nope", "--no-progress"])
    assert r.exit_code == 1 and "unknown stage 'nope'" in r.output
    r = runner.invoke(cli, ["run", str(src), "-b", "tpu"])
    assert r.exit_code == 2 and "'tpu' is not one of" in r.output
    bad_cfg = tmp_path / "c.toml"
    bad_cfg.write_text("[cell_sum]\nscale = 'x'\n")
    r = runner.invoke(cli, ["run", str(src), "-s", "cell_sum", "--config", str(bad_cfg),
                            "--no-progress"])
    assert r.exit_code == 1 and "c.toml: [cell_sum].scale: expected a number" in r.output


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="a GPU is present")
def test_run_cuda_without_gpu_names_cpu(tmp_path):
    src = tmp_path / "in.root"
    _write_small_file(src)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    r = subprocess.run(
        [sys.executable, "-m", "hltemu.cli", "run", str(src), "--backend", "cuda", "--no-progress",
         "-o", str(tmp_path / "o.root"), "-r", str(tmp_path / "r.json")],
        env=env, capture_output=True, text=True,
    )
    assert r.returncode == 1
    assert "backend 'cuda' is not usable here" in r.stderr and "--backend cpu" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_prints_ratios(tmp_path, cell_sum_stage, monkeypatch):  # noqa: F811
    """`hltemu bench` times each backend once, on the first 10 events, best of 2, and prints per
    stage and in total the events/s of each and the speed-up cpu/reference of those times."""
    from hltemu import bench

    timed = []

    def recording(batch, backend, chain, config, repeat, **kw):
        best = real(batch, backend, chain, config, repeat, **kw)
        timed.append((backend, batch.n_events, [st.name for st in chain], repeat, best))
        return best

    real = bench.time_backend
    monkeypatch.setattr(bench, "time_backend", recording)
    src = tmp_path / "in.root"
    _write_small_file(src)
    r = CliRunner(env={"COLUMNS": "200"}).invoke(
        cli, ["bench", str(src), "--backends", "reference,cpu", "-s", "cell_sum", "-n", "10",
              "--repeat", "2"])
    assert r.exit_code == 0, r.output
    assert [t[:4] for t in timed] == [("reference", 10, ["cell_sum"], 2),
                                      ("cpu", 10, ["cell_sum"], 2)]
    ref, cpu = timed[0][4], timed[1][4]
    assert ref["total"] == ref["cell_sum"] and cpu["total"] == cpu["cell_sum"]
    assert "hltemu bench: 10 events, best of 2" in r.output
    header = next(line for line in r.output.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.strip("┃").split("┃")] == [
        "stage", "reference events/s", "cpu events/s", "cpu/reference"]
    assert _table_rows(r.output)[4] == [
        [name, f"{10 / ref[name]:,.1f}", f"{10 / cpu[name]:,.1f}",
         f"{ref[name] / cpu[name]:.2f}x"] for name in ("cell_sum", "total")]


@pytest.mark.parametrize("backend_name,warmup",
                         [("cpu", True), ("cpu", False), ("reference", True)])
def test_run_warmup_is_reported_apart(tmp_path, cell_sum_stage, backend_name, warmup):  # noqa: F811
    src = tmp_path / "in.root"
    _write_small_file(src)
    out, rep = tmp_path / "out.root", tmp_path / "r.json"
    args = ["run", str(src), "-b", backend_name, "-s", "cell_sum", "--batch-size", "7",
            "-o", str(out), "-r", str(rep), "--no-progress",
            "--warmup" if warmup else "--no-warmup"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(rep.read_text())
    # the warm-up pass on the first event is neither counted as a call nor written out
    assert report["stages"]["cell_sum"]["calls"] == 4 and report["events"] == 23
    assert io.read_collections(out)["cell_sum"].n_events == 23
    if backend_name == "cpu" and warmup:
        assert report["warmup_seconds"] > 0 and "warm-up" in result.output
    else:
        assert report["warmup_seconds"] == 0 and "warm-up" not in result.output
