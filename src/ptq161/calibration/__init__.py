"""Calibration: capture what every decoder layer receives, replay layers, record input statistics."""

from .capture import BlockCall, capture_block_inputs, record_layer_calls, run_block
from .stats import ChannelStats, HessianAccumulator, record_hessians, record_input_stats

__all__ = [
    "BlockCall",
    "ChannelStats",
    "HessianAccumulator",
    "capture_block_inputs",
    "record_hessians",
    "record_input_stats",
    "record_layer_calls",
    "run_block",
]
