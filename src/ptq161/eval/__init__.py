"""Evaluation: perplexity (and, later, zero-shot tasks and reports)."""

from .perplexity import PerplexityResult, perplexity, window_nll, windows_of

__all__ = ["PerplexityResult", "perplexity", "window_nll", "windows_of"]
