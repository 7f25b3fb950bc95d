"""Evaluation: perplexity (GPTQ protocol), zero-shot tasks (lm-eval), salient-concentration statistics, tables."""

from .perplexity import PerplexityResult, perplexity, window_nll, windows_of

__all__ = ["PerplexityResult", "perplexity", "window_nll", "windows_of"]
