"""A run is checked before it starts: a broken config (menu, correction file, model, an unknown
``[trigger] paths`` entry) fails before the first event is read and leaves no file, serially and
with ``--workers``; ``hltemu info --config`` exits 1 on it; relative file names in a config are
taken relative to the config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hltemu import io
from hltemu.cli import builtin_sample, cli
from hltemu.pipeline import load_config
from hltemu.stages.trigger import menu_paths

BROKEN = {
    "menu": ("[trigger]\nmenu = 'bad-menu.toml'\n",
             "bad-menu.toml: path 'X': 'type' = 'nope'; choices: single_jet"),
    "jec file": ("[jec]\nlevels = ['missing_L2Relative_AK4Calo.txt']\n",
                 "[jec] levels: correction file "),
    "model": ("[doublet_cnn]\nweights = 'no-such-model'\n",
              "[doublet_cnn] weights = "),
    "trigger path": ("[trigger]\npaths = ['HLT_CaloJet80', 'HLT_Nope']\n",
                     "[trigger] paths: ['HLT_Nope'] not in menu 'builtin:menu.toml'"),
}


def write_broken(tmp_path: Path, case: str) -> Path:
    (tmp_path / "bad-menu.toml").write_text("[[path]]\nname = 'X'\ntype = 'nope'\n")
    cfg = tmp_path / "broken.toml"
    cfg.write_text(BROKEN[case][0])
    return cfg


@pytest.fixture
def reader_never_called(monkeypatch):
    """Fail the test if any event is read."""
    def refuse(*args, **kwargs):
        raise AssertionError("the reader was called")

    monkeypatch.setattr(io, "iterate_batches", refuse)
    monkeypatch.setattr(io, "read_collections", refuse)


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("workers", [None, 2])
def test_broken_config_fails_before_the_first_event(tmp_path, case, workers,
                                                    reader_never_called):
    cfg = write_broken(tmp_path, case)
    out, report = tmp_path / "out" / "o.root", tmp_path / "out" / "r.json"
    out.parent.mkdir()
    args = ["run", str(builtin_sample()), "--config", str(cfg), "--no-progress",
            "-o", str(out), "-r", str(report), "--backend", "reference"]
    if workers:
        args += ["--workers", str(workers)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert BROKEN[case][1] in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_info_exits_1_on_a_broken_config(tmp_path, case):
    result = CliRunner().invoke(cli, ["info", "--config", str(write_broken(tmp_path, case))])
    assert result.exit_code == 1
    assert BROKEN[case][1] in " ".join(result.output.split())


def test_info_exits_0_on_a_good_config(tmp_path):
    cfg = tmp_path / "good.toml"
    cfg.write_text("[trigger]\npaths = ['HLT_CaloJet80']\n[antikt]\nR = 0.6\n")
    assert CliRunner().invoke(cli, ["info", "--config", str(cfg)]).exit_code == 0


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    menu = "[[path]]\nname = 'J10'\ntype = 'single_jet'\npt_min = 10.0\n"
    (sub / "my-menu.toml").write_text(menu)
    (sub / "c.toml").write_text(
        "[trigger]\nmenu = 'my-menu.toml'\n"
        "[jec]\nlevels = ['builtin:Fall17_17Nov2017_V32_MC_L2Relative_AK4Calo.txt', "
        "'corr/L3.txt#L3Absolute', '/abs/L1.txt']\n"
        "[doublet_cnn]\nweights = '../models/cnn'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "configs" / "c.toml")
    base = Path("..") / "configs"
    assert cfg["trigger"].menu == str(base / "my-menu.toml")
    assert cfg["jec"].levels == ("builtin:Fall17_17Nov2017_V32_MC_L2Relative_AK4Calo.txt",
                                 str(base / "corr" / "L3.txt#L3Absolute"), "/abs/L1.txt")
    assert cfg["doublet_cnn"].weights == str(base / ".." / "models" / "cnn")
    # the menu is read from another working directory
    assert [p.name for p in menu_paths(cfg["trigger"])] == ["J10"]
