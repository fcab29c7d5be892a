"""Sizes the doublet-CNN encoder supports: the one definition, imported by the CUDA kernels
(:mod:`hltemu.kernels.doublet_cnn`, which size their per-thread scratch within them) and by the
model loader (:func:`hltemu.cnn.validate`, which refuses larger models).

Plain constants, no imports: importing them loads neither Numba nor the configuration.
"""

#: Largest activation map (channels x height x width, float32 entries) of an encoder
#: convolution: the CUDA encoder keeps one per thread in local memory.
MAX_ACTIVATIONS = 1024
#: Largest input patch (input channels x kernel area, float32 entries) of an encoder
#: convolution (CUDA per-thread scratch).
MAX_PATCH = 256
