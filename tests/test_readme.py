"""README.md stays true: its config example runs as written, and CI runs exactly its install
and test commands."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from hltemu.cli import cli
from hltemu.pipeline import load_config

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_the_config_example_runs_as_written(tmp_path):
    (example,) = [b for b in _blocks("toml") if "[antikt]" in b]
    path = tmp_path / "hlt.toml"
    path.write_text(example)
    result = CliRunner().invoke(cli, ["info", "--config", str(path)])
    assert result.exit_code == 0, result.output
    cfg = load_config(path)
    assert cfg["antikt"].R == 0.6 and cfg["trigger"].paths == ("HLT_CaloJet80", "HLT_CaloHT250")


def test_ci_runs_the_readme_install_and_test_commands():
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith(("#", "set ", "cd "))]
    install_section = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    test_section = README.split("## Test", 1)[1].split("\n## ", 1)[0]
    install = [ln.split("#")[0].strip() for ln in _blocks_in(install_section)[0].splitlines()
               if "pip install" in ln]
    test = _blocks_in(test_section)[0].strip()
    assert ci == [*install, test]


def _blocks_in(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)
