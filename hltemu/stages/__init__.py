"""HLT stages: one module per stage, each registering itself with :mod:`hltemu.pipeline`.

Each module holds the stage's reference implementation (written for reading) and dispatches the
``cpu`` and ``cuda`` backends to :mod:`hltemu.kernels`.
"""

# Registration order: the pipeline orders the chain by needs/adds (hltemu.pipeline.chain_order)
# and, among stages free to run, keeps this order (which fixes report rows and output branches).
# isort: off
import hltemu.stages.doublets  # noqa: F401
import hltemu.stages.doublet_cnn  # noqa: F401
import hltemu.stages.topocluster  # noqa: F401
import hltemu.stages.antikt  # noqa: F401  (antikt, then genjets)
import hltemu.stages.rho  # noqa: F401
import hltemu.stages.jec  # noqa: F401
import hltemu.stages.trigger  # noqa: F401
# isort: on
