"""Calibration and evaluation corpora."""

from .corpora import (
    CALIB_CORPORA,
    EVAL_CORPORA,
    TokenSet,
    calibration_windows,
    default_calib_corpus,
    default_eval_corpora,
    default_eval_corpus,
    eval_tokens,
)
from .sources import resolve_data_dir

__all__ = [
    "CALIB_CORPORA",
    "EVAL_CORPORA",
    "TokenSet",
    "calibration_windows",
    "default_calib_corpus",
    "default_eval_corpora",
    "default_eval_corpus",
    "eval_tokens",
    "resolve_data_dir",
]
