"""Numerical kernels (installed as ``hltemu.kernels``): Numba CPU and CUDA variants.

No I/O, no config parsing, no printing: kernels take flat arrays and CSR offsets.
"""
