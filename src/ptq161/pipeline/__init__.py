"""The block-wise pipeline: the one driver every method runs on, resume state, conversion to the
packed format, the output directory, and the quantize / preprocess orchestration."""
