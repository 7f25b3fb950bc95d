"""Calibration: capture the inputs of the first decoder block, replay blocks, record input statistics."""

from .capture import BlockCall, capture_block_inputs, run_block
from .stats import ChannelStats, HessianAccumulator, record_hessians, record_input_stats

__all__ = [
    "BlockCall",
    "ChannelStats",
    "HessianAccumulator",
    "capture_block_inputs",
    "record_hessians",
    "record_input_stats",
    "run_block",
]
