"""hltemu: a GPU-accelerated emulator of a collider experiment's High Level Trigger.

The public API is small: :func:`get_backend`, :class:`EventBatch`, :class:`Collection`,
:func:`run` (the whole chain over ROOT files) and the stage registry in :mod:`hltemu.pipeline`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from hltemu.backends import Backend, BackendError, get_backend
from hltemu.batch import Collection, EventBatch

__all__ = [
    "Backend", "BackendError", "Collection", "EventBatch", "get_backend", "run", "__version__",
]


def run(*args, **kwargs):
    """Run the chain over ROOT files; see :func:`hltemu.pipeline.run_files`."""
    from hltemu.pipeline import run_files

    return run_files(*args, **kwargs)
