"""Compile kernels to sm_90 PTX in a process without the CUDA simulator (NVVM, no GPU needed)
and read back the instruction counts it prints: the shared runner of the no-FMA tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest


def ptx_counts(args: list[str]) -> dict:
    """Run ``python *args`` with ``NUMBA_ENABLE_CUDASIM=0``; the process prints one line
    ``PTX-COUNTS <json>``, returned parsed.  Skips the test when NVVM is not available."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                         timeout=300)
    if res.returncode != 0:
        if re.search(r"NVVM|libnvvm|nvvm", res.stderr) and "PTX-COUNTS" not in res.stdout:
            pytest.skip(f"NVVM not available: {res.stderr.strip().splitlines()[-1]}")
        raise AssertionError(res.stderr)
    line = next(s for s in res.stdout.splitlines() if s.startswith("PTX-COUNTS "))
    return json.loads(line.removeprefix("PTX-COUNTS "))
