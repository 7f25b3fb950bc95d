"""Runtime: the fused CPU decode engine for packed models and batch-1 greedy generation."""

from .engine import DecodeEngine
from .generate import SpeedResult, greedy_generate, measure_speed, pick_engine

__all__ = ["DecodeEngine", "SpeedResult", "greedy_generate", "measure_speed", "pick_engine"]
