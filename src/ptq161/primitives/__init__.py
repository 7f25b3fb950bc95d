"""The bottom layer: quantizer math (RTN, binarization), bit packing and the numba CPU kernels.

Nothing here imports another ptq161 package; every other layer builds on these.
"""
