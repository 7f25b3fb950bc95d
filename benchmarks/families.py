"""Tiny random models of the families people run, built from transformers' config classes (no downloads).

Each family is a small config whose features matter for correctness: sliding windows shorter than
the test windows, layers of several types, rotary bases per layer type, NoPE layers, q/k norms,
multipliers and soft-capping. ``tests/models/test_families.py`` checks every family; the table of
what works for each is ``python -m benchmarks.families`` (results/families.{json,md}, README).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

SMALL: dict[str, Any] = dict(
    vocab_size=260,  # covers the tests' byte tokenizer
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.2,  # far from uniform predictions: a wrong path changes the perplexity visibly
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
WINDOW = 16  # sliding window: shorter than the test windows, so that the local layers differ from global ones
ALTERNATE = ["sliding_attention", "full_attention"] * 2


def _gemma_common() -> dict[str, Any]:
    return dict(head_dim=16, sliding_window=WINDOW, layer_types=ALTERNATE, query_pre_attn_scalar=16)


# family -> (config class name, model class name, config overrides beyond SMALL)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen2-sliding": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=2,
            layer_types=["full_attention", "full_attention", "sliding_attention", "sliding_attention"],
        ),
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16)),
    "mistral-sliding": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_gemma_common(), final_logit_softcapping=30.0)),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            _gemma_common(),
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            },
        ),
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "granite": (
        "GraniteConfig",
        "GraniteForCausalLM",
        dict(embedding_multiplier=6.0, residual_multiplier=0.5, attention_multiplier=0.1, logits_scaling=4.0),
    ),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(no_rope_layer_interval=2)),
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}),
    "phi": ("PhiConfig", "PhiForCausalLM", {}),
}


def family_config(family: str) -> transformers.PretrainedConfig:
    """The tiny config of ``family`` (a key of ``FAMILIES``)."""
    config_cls, model_cls, extra = FAMILIES[family]
    return getattr(transformers, config_cls)(**{**SMALL, **extra, "architectures": [model_cls]})


def tiny_family(family: str, seed: int = 0) -> nn.Module:
    """A random tiny model of ``family`` in eval mode, reproducible by ``seed``. Biases and norm weights
    are drawn away from their initial values (zeros / ones), so a path that drops one changes the output."""
    config = family_config(family)
    torch.manual_seed(seed)
    model = getattr(transformers, FAMILIES[family][1])(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def family_builders() -> dict[str, Callable[[], nn.Module]]:
    """family -> a function building its tiny model."""
    return {f: (lambda f=f: tiny_family(f)) for f in FAMILIES}


# ---- checks: shared by tests/models/test_families.py and this benchmark's table ----

SEQLEN = 64


def eval_tokens(n_windows: int = 3) -> torch.Tensor:
    """Fixed random token ids [1, n_windows * SEQLEN] (ids 3..259: no special tokens)."""
    return torch.randint(3, 260, (1, n_windows * SEQLEN), generator=torch.Generator().manual_seed(1))


def plain_perplexity(model: nn.Module, tokens: torch.Tensor) -> float:
    """exp(mean window loss) from the model's own logits (transformers only, no ptq161 code)."""
    import math

    import torch.nn.functional as F

    wins = tokens[0, : tokens.shape[1] // SEQLEN * SEQLEN].reshape(-1, SEQLEN)
    with torch.no_grad():
        nlls = [F.cross_entropy(model(input_ids=w[None]).logits[0, :-1].float(), w[1:]).item() for w in wins]
    return math.exp(sum(nlls) / len(nlls))


def three_perplexities(model_dir: str, tokens: torch.Tensor) -> dict[str, float]:
    """The perplexity of the model in ``model_dir`` three ways: plain transformers (FP directories only),
    ptq161 in memory and ptq161 block-onloaded."""
    from ptq161.eval.perplexity import perplexity
    from ptq161.models.loading import load_model, load_model_lazy

    model = load_model(model_dir)[0]
    out = {
        "in_memory": perplexity(model, tokens, seqlen=SEQLEN, progress=False).ppl,
        "onloaded": perplexity(load_model_lazy(model_dir)[0], tokens, seqlen=SEQLEN, progress=False).ppl,
    }
    if getattr(model.config, "quantization_config", None) is None:
        out["transformers"] = plain_perplexity(model, tokens)
    return out


def max_rel_spread(ppl: dict[str, float]) -> float:
    """The largest relative difference between the values of ``ppl``."""
    vals = list(ppl.values())
    return (max(vals) - min(vals)) / min(vals)


def try_method(model_dir: str, method: str, out: str, text_file: str) -> str:
    """Quantize the model in ``model_dir`` with ``method`` (the smoke recipe's budget): "ok", or
    "refused: <the one-line error>". Any other exception propagates (a bug)."""
    from ptq161 import quantize
    from ptq161.errors import PTQ161Error

    try:
        quantize(model_dir, "smoke", method=method, output=out, calib_dataset=f"text:{text_file}", progress=False)
    except PTQ161Error as e:
        return f"refused: {str(e).splitlines()[0]}"
    return "ok"


def engine_check(packed_dir: str, new_tokens: int = 8, prompt_len: int = 12) -> str:
    """ "same tokens" when the fused engine decodes a packed model's greedy tokens equal to its forward's,
    "refused: <reason>" when the engine does not serve it; raises AssertionError on different tokens."""
    from ptq161.models.loading import load_model
    from ptq161.runtime.engine import DecodeEngine
    from ptq161.runtime.generate import greedy_generate

    model = load_model(packed_dir)[0]
    prompt = eval_tokens(1)[:, :prompt_len]
    reason = DecodeEngine.unsupported_reason(model, prompt.shape[1] + new_tokens)
    if reason is not None:
        return f"refused: {reason}"
    fwd = greedy_generate(model, prompt, new_tokens, engine="off")[0]
    eng = greedy_generate(model, prompt, new_tokens, engine="on")[0]
    assert eng == fwd, (eng, fwd)
    return "same tokens"


def check_family(family: str, root: Path, text_file: Path, methods: list[str]) -> dict[str, Any]:
    """Every check of one family (fresh directories under ``root``): FP perplexity three ways, each
    method's verdict, the PTQ1.61 output's perplexity in memory and onloaded, the fused engine's verdict."""
    from tests.helpers import save_model_dir

    src = str(save_model_dir(tiny_family(family), root / family))
    fp = three_perplexities(src, eval_tokens())
    verdicts = {m: try_method(src, m, str(root / f"{family}-{m}"), str(text_file)) for m in methods}
    packed = str(root / f"{family}-ptq161")
    q = three_perplexities(packed, eval_tokens()) if verdicts.get("ptq161") == "ok" else {}
    return {
        "family": family,
        "class": FAMILIES[family][1],
        "fp_ppl": fp,
        "fp_spread": max_rel_spread(fp),
        "methods": verdicts,
        "ptq161_ppl": q,
        "ptq161_spread": max_rel_spread(q) if q else None,
        "engine": engine_check(packed) if q else "-",
    }


def _engine_cell(verdict: str) -> str:
    if verdict == "same tokens":
        return "yes (same tokens as the forward)"
    first = verdict.removeprefix("refused: ").split("; ")[0]
    return f"no: {first}" + (" ..." if "; " in verdict else "")


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per family (what the README shows)."""
    from ptq161.eval.report import markdown_table

    out = []
    for r in rows:
        ok = [m for m, v in r["methods"].items() if v == "ok"]
        refused = [m for m, v in r["methods"].items() if v != "ok"]
        methods = f"{len(ok)} of {len(r['methods'])}" + (f" (refused: {', '.join(refused)})" if refused else "")
        spread = max(r["fp_spread"], r["ptq161_spread"] or 0.0)
        out.append((r["family"], f"`{r['class']}`", f"{spread:.0e}", methods, _engine_cell(r["engine"])))
    head = ["family", "transformers class", "perplexity paths differ by", "methods", "fused engine"]
    return markdown_table(head, out)


def main() -> None:
    import argparse
    import tempfile

    from tests.helpers import SAMPLE_TEXT

    from benchmarks.common import write_results
    from ptq161.methods import METHODS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        text = root / "sample.txt"
        text.write_text(SAMPLE_TEXT)
        for family in args.families.split(","):
            rows.append(check_family(family, root, text, list(METHODS)))
            print(family, rows[-1]["engine"][:60], flush=True)
    notes = (
        "Each family is a tiny random model built from its transformers config class (benchmarks/families.py: "
        "4 layers, hidden 64, sliding windows of 16 tokens where the family has them, local and global layers "
        "alternating). 'perplexity paths differ by': the largest relative difference between ptq161's "
        "in-memory perplexity, its block-onloaded one (`--max-memory`) and plain transformers' loss on the same "
        "3 windows of 64 tokens, for the FP model and for its PTQ1.61 output (smoke recipe; transformers' "
        "loss only for the FP model). 'methods': each of ptq161's methods run with the smoke recipe's budget "
        "(`--recipe smoke --method M`); a refusal is a one-line error. 'fused engine': on the PTQ1.61 output, "
        "8 greedy tokens through the engine equal the model's forward's, or the engine refuses with the first "
        "of its reasons (all of them in the JSON). The same checks run in tests/models/test_families.py."
    )
    write_results("families", "Families: correct numbers or a one-line refusal", table(rows), {"rows": rows},
                  notes=notes)  # fmt: skip


if __name__ == "__main__":
    main()
