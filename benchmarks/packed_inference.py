"""Packed PTQ1.61 artifacts on smollm2-135m: bits on disk, load-back fidelity, CPU decode speed.

Quantizes smollm2-135m (``--preset``, default demo: quality is not the point here) into a
packed directory, then in ONE process measures batch-1 greedy decoding and prefill
tokens/s of the packed model and of the fp32 dense model; checks that the packed model
gives the same greedy tokens and (nearly) the same logits as the fake-quant model rebuilt
from the same parts; peak RSS of each is measured in a fresh child process.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import bench_parser, note, recipe_budget, run_child, serve_child, write_results
from ptq161.eval.report import markdown_table

INT8 = "packed, int8 embedding + lm_head"
ENG = "packed, fused decode engine"
ENG8 = "packed, int8 embedding + lm_head, fused decode engine"
PROMPT = "The history of the city begins in the early middle ages, when " * 40


def fake_quant_copy(packed_dir: Path) -> nn.Module:
    """The fake-quant model: the packed model with every packed linear replaced by nn.Linear(dequantize())."""
    import ptq161
    from ptq161.pipeline.convert import dequantize_model_in_place

    model, _ = ptq161.load(packed_dir)
    dequantize_model_in_place(model)
    return model


def engine_logit_diff(packed: nn.Module, fake: nn.Module, ids: torch.Tensor, steps: int = 16) -> float:
    """Max |logit| difference between the fused engine on ``packed`` and ``fake``'s own forward, per decode step."""
    from transformers import DynamicCache

    from ptq161.runtime import DecodeEngine

    eng = DecodeEngine(packed, max_len=ids.shape[1] + steps + 1)
    cache = DynamicCache()
    with torch.no_grad():
        ref = fake(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1]
        eng.prefill(ids)
        token, pos, diff = int(ref.argmax()), ids.shape[1], 0.0
        for _ in range(steps):
            want = fake(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits[0, -1]
            diff = max(diff, (eng.step(token, pos) - want).abs().max().item())
            token, pos = int(want.argmax()), pos + 1
    return diff


def rss_child(spec: str, prompt_tokens: int, new_tokens: int, engine: str = "off") -> float:
    """Peak RSS (MiB) of a fresh process that loads ``spec`` and generates (``serve_child`` runs it)."""
    args = ["--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens), "--engine", engine]
    return run_child("benchmarks.packed_inference", spec, args)["peak_rss_mb"]


def rss_job(spec: str, prompt_tokens: int, new_tokens: int, engine: str) -> dict:
    """In the child: load ``spec``, generate, report this process's peak RSS."""
    import ptq161
    from ptq161.runtime import measure_speed
    from ptq161.utils import peak_rss_mb

    model, tok = ptq161.load(spec)
    ids = tok(PROMPT, return_tensors="pt").input_ids[:, :prompt_tokens]
    measure_speed(model, ids, new_tokens, engine=engine)
    return {"peak_rss_mb": peak_rss_mb()}


def median_result(results: list):
    """The SpeedResult with the median decode speed (its prefill speed from the median too)."""
    import dataclasses
    import statistics

    mid = sorted(results, key=lambda r: r.decode_tokens_per_s)[len(results) // 2]
    return dataclasses.replace(mid, prefill_tokens_per_s=statistics.median(r.prefill_tokens_per_s for r in results))


def round_ratios(rounds: list[dict], name: str) -> str:
    """Median (min-max) over rounds of decode tok/s of ``name`` / dense fp32 in the same round."""
    r = sorted(x[name].decode_tokens_per_s / x["dense fp32"].decode_tokens_per_s for x in rounds)
    return f"{r[len(r) // 2]:.2f}x ({r[0]:.2f}-{r[-1]:.2f} over {len(r)} rounds)"


def same_tokens(rounds: list[dict], name: str) -> bool:
    """Whether ``name`` generated the fake-quant model's greedy tokens in every round."""
    return all(r[name].tokens == r["fake-quant"].tokens for r in rounds)


def layer_4096_bits() -> float:
    """Bits per weight from the bytes of a saved packed 4096 x 4096 layer."""
    from safetensors.torch import save_file

    from ptq161.nn import PackedPTQ161Linear
    from ptq161.primitives.bits import pack_bits, pack_nibbles

    n, n_s = 4096, math.floor(0.2 * 4096) + 1
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:n_s]] = True
    parts = {
        "mask": mask,
        "sign": pack_bits(torch.rand(n, n - n_s, generator=g) > 0.5),
        "codes": pack_nibbles(torch.randint(0, 16, (n, n_s), dtype=torch.uint8, generator=g)),
        "scale": torch.ones(n).half(),
        "zero": torch.zeros(n, dtype=torch.uint8),
        "a": torch.ones(n).half(),
        "b": torch.zeros(n).half(),
        "r2": torch.ones(n - n_s).half(),
    }
    mod = PackedPTQ161Linear.from_parts(parts)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "layer.safetensors"
        save_file({k: v.contiguous() for k, v in mod.state_dict().items()}, str(f))
        tensor_bytes = sum(v.numel() * v.element_size() for v in mod.state_dict().values())
        return 8 * tensor_bytes / (n * n), 8 * f.stat().st_size / (n * n)


def main() -> None:
    import ptq161
    from ptq161 import CalibConfig, Recipe, evaluate_perplexity, quantize
    from ptq161.methods.ptq161 import PTQ161Config
    from ptq161.pipeline.convert import add_compact_head
    from ptq161.pipeline.output_dir import file_bits_per_weight, read_meta
    from ptq161.runtime import measure_speed

    ap = bench_parser(__doc__, redo=False, render_only=False)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="speed rounds (every model once per round); medians")
    ap.add_argument("--engine", default="off", help=argparse.SUPPRESS)  # of the peak-RSS child
    args = ap.parse_args()
    if serve_child(args, lambda spec: rss_job(spec, args.prompt_tokens, args.new_tokens, args.engine)):
        return

    with tempfile.TemporaryDirectory(prefix="ptq161-packed-") as tmp:
        out = Path(tmp) / "packed"
        epochs, nsamples, seqlen = recipe_budget(args.preset)  # the recipe's budget, the paper's settings
        recipe = Recipe("ptq161", PTQ161Config(epochs=epochs), CalibConfig(nsamples=nsamples, seqlen=seqlen))
        quantize("smollm2-135m", recipe, output=out, progress=False)
        meta = read_meta(out)
        disk_bits = file_bits_per_weight(out, meta["bits"]["layers"])
        dir_bytes = sum(f.stat().st_size for f in out.iterdir())
        packed, tok = ptq161.load(out)
        fake = fake_quant_copy(out)
        out8 = Path(tmp) / "packed-int8-head"
        add_compact_head(packed, "int8")
        packed.save_pretrained(out8)
        tok.save_pretrained(out8)
        packed8, _ = ptq161.load(out8)
        dir8_bytes = sum(f.stat().st_size for f in out8.iterdir())
        packed, _ = ptq161.load(out)
        dense, _ = ptq161.load("smollm2-135m")
        ids = tok(PROMPT, return_tensors="pt").input_ids[:, : args.prompt_tokens]
        with torch.no_grad():
            lp, lf = packed(ids).logits, fake(ids).logits
            sp, sf = packed(ids[:, :4]).logits, fake(ids[:, :4]).logits  # decode-sized: lookup kernel
        ppl = {
            name: evaluate_perplexity(m, tok, ["wikitext2"], max_windows=2, progress=False)[0].ppl
            for name, m in (("packed", packed), ("fake-quant", fake))
        }
        engine_diff = engine_logit_diff(packed, fake, ids)
        runs = (
            ("packed", packed, "off"),
            (INT8, packed8, "off"),
            (ENG, packed, "on"),
            (ENG8, packed8, "on"),
            ("fake-quant", fake, "off"),
            ("dense fp32", dense, "off"),
        )
        rounds = [  # every model once per round, so each round's ratios share the machine's state
            {name: measure_speed(m, ids, args.new_tokens, engine=engine) for name, m, engine in runs}
            for _ in range(args.rounds)
        ]
        speed = {name: median_result([r[name] for r in rounds]) for name, _, _ in runs}
        rss = {
            "packed": rss_child(str(out), args.prompt_tokens, args.new_tokens),
            INT8: rss_child(str(out8), args.prompt_tokens, args.new_tokens),
            ENG: rss_child(str(out), args.prompt_tokens, args.new_tokens, "on"),
            ENG8: rss_child(str(out8), args.prompt_tokens, args.new_tokens, "on"),
            "dense fp32": rss_child("smollm2-135m", args.prompt_tokens, args.new_tokens),
        }
    n_params = sum(p.numel() for p in dense.parameters())
    fp16_bytes = 2 * n_params
    b4096 = layer_4096_bits()
    ratio, ratio8, ratio_e, ratio_e8 = (round_ratios(rounds, name) for name in ("packed", INT8, ENG, ENG8))
    rows = [
        (k, round(v.prefill_tokens_per_s, 1), round(v.decode_tokens_per_s, 2), rss.get(k, "-"))
        for k, v in speed.items()
    ]
    table = markdown_table(["model", "prefill tok/s", "decode tok/s (batch 1, greedy)", "peak RSS MiB"], rows)
    facts = [
        ("decode speed-up packed (fp32 lm_head) / dense fp32, same process", ratio),
        ("decode speed-up packed (int8 lm_head) / dense fp32, same process", ratio8),
        ("decode speed-up packed + fused engine (fp32 lm_head) / dense fp32, same process", ratio_e),
        ("decode speed-up packed + fused engine (int8 lm_head) / dense fp32, same process", ratio_e8),
        ("same greedy tokens packed vs fake-quant (every round)", same_tokens(rounds, "packed")),
        ("same greedy tokens packed + fused engine vs fake-quant (every round)", same_tokens(rounds, ENG)),
        ("max |logit| difference, fused engine vs fake-quant (16 decode steps)", f"{engine_diff:.2e}"),
        ("max |logit| difference, prefill path (row tiles)", f"{(lp - lf).abs().max().item():.2e}"),
        ("max |logit| difference, decode path (lookup kernel)", f"{(sp - sf).abs().max().item():.2e}"),
        ("WikiText-2 ppl (first 2 windows) packed / fake-quant", f"{ppl['packed']:.6f} / {ppl['fake-quant']:.6f}"),
        ("decoder-linear bits/weight from bytes on disk", f"{disk_bits:.4f}"),
        ("decoder-linear bits/weight by the format's count", f"{meta['bits']['stored_bits_per_weight']:.4f}"),
        ("packed 4096 x 4096 layer bits/weight (tensor bytes / file bytes)", f"{b4096[0]:.4f} / {b4096[1]:.4f}"),
        ("packed directory size (fp32 embedding, tied lm_head)", f"{dir_bytes / 2**20:.1f} MiB"),
        ("packed directory size (int8 embedding + int8 lm_head)", f"{dir8_bytes / 2**20:.1f} MiB"),
        ("fp16 checkpoint size (2 bytes x parameters)", f"{fp16_bytes / 2**20:.1f} MiB"),
    ]
    table += "\n\n" + markdown_table(["measure", "value"], facts)
    notes = note(
        "packed_inference", torch_threads=torch.get_num_threads(), numba_threads=__import__("numba").get_num_threads()
    )
    write_results(
        "packed_inference",
        "Packed PTQ1.61 smollm2-135m: size, fidelity, CPU speed",
        table,
        {
            "speed": {k: v.to_dict() for k, v in speed.items()},
            "rounds": [{k: v.to_dict() for k, v in r.items()} for r in rounds],
            "rss_mb": rss,
            "facts": dict(facts),
        },
        notes,
        preset=args.preset,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        rounds=args.rounds,
    )
    print(table)


if __name__ == "__main__":
    main()
