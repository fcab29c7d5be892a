"""Check plots of a file made by ``hltemu generate`` (default: the built-in ttbar sample).

    pip install 'hltemu[plots]'
    python examples/plot_simulation.py [FILE.root] [--out DIR]

Draws pixel hits in r-z and x-y, hits per layer (particle and noise hits), cluster sizes versus
|eta|, example charge pads, calorimeter cell energies, the noise of empty cells against a unit
Gaussian, the noise sigma per cell versus eta, an eta-phi event display and the generator
particles' eta (see hltemu.simulate.plots).  ``hltemu generate --plots DIR`` draws the same.
"""

from __future__ import annotations

import argparse
from importlib import resources

from hltemu.extras import require_or_exit
from hltemu.simulate.plots import make_plots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default=None,
                        help="ROOT file written by hltemu generate (default: built-in sample)")
    parser.add_argument("--out", default="simulation-plots", help="output directory")
    args = parser.parse_args()
    require_or_exit("plots", "examples/plot_simulation.py")
    path = args.file or str(resources.files("hltemu") / "data" / "sample.root")
    for written in make_plots(path, args.out):
        print(written)


if __name__ == "__main__":
    main()
