"""HLT stages: one module per stage, each registering itself with :mod:`hltemu.pipeline`.

Each module holds the stage's config dataclass, its reference implementation (written for
reading) and its ``cpu`` and ``cuda`` implementations, which call :mod:`hltemu.kernels`.  Every
module of this package is imported when the registry is first read, so a new stage needs no
line here.
"""

import importlib
import pkgutil

#: Registration order of today's stages.  The pipeline orders the chain by needs/adds
#: (:func:`hltemu.pipeline.chain_order`) and, among stages free to run in either order, keeps
#: registration order, which fixes report rows and output branches.  Modules not listed here
#: (a new stage) are imported after these, alphabetically; listing one is only needed to move
#: it among stages it does not depend on.
REGISTRATION_ORDER: tuple[str, ...] = (
    "doublets", "doublet_cnn", "topocluster", "antikt", "genjets", "rho", "jec", "trigger",
)


def stage_modules() -> list[str]:
    """The modules of this package, in registration order (see :data:`REGISTRATION_ORDER`)."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    rank = {name: i for i, name in enumerate(REGISTRATION_ORDER)}
    return [f"{__name__}.{n}" for n in sorted(names, key=lambda n: (rank.get(n, len(rank)), n))]


for _module in stage_modules():
    importlib.import_module(_module)
