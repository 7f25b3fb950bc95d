"""Quantization preprocessing (restorative LoRA) on smollm2-135m: paper Fig. 5, Table 9, Fig. 4 analogues.

Runs (each a fresh child process, stored in results/preprocess.json as it finishes,
re-running resumes; ``--redo NAME`` recomputes one):

* ``lora_N`` for N in --steps: ``ptq161 preprocess`` with the cpu preset at N LoRA steps
  (first pass PTQ1.61 demo preset, LoRA on the C4 train sample), then the FP perplexity of
  the preprocessed model (Table 9) and PTQ1.61 (demo preset) on it (effect vs budget);
* ``original_ptq161_demo``: PTQ1.61 (demo preset) on the original model, the reference of
  the budget study;
* ``fig5_METHOD``: GPTQ-W2, BiLLM, PB-LLM with the comparison benchmark's calibration
  (64 x 256) on the preprocessed model of the largest budget, against the original rows
  of results/compare.json (Fig. 5);
* ``concentration``: the salient-weight share in the top-20 % activation channels for every
  decoder linear, original vs preprocessed, and maps of chosen layers (Fig. 4 / 10).
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import (
    OUTPUTS,
    PAPERS_CALIB,
    RESULTS,
    bench_parser,
    fp_perplexities,
    note,
    quantize_and_evaluate,
    recipe_budget,
    run_pending,
    serve_child,
    stored,
    write_results,
)
from ptq161.eval.report import markdown_table
from ptq161.utils import atomic_write_json

WINDOWS = 8
MAP_LAYERS = ("model.layers.2.mlp.down_proj", "model.layers.15.self_attn.q_proj", "model.layers.29.mlp.down_proj")
FIG5 = {"gptq_w2": ("gptq", dict(bits=2)), "billm": ("billm", {}), "pbllm": ("pbllm", {})}
LABELS = {"gptq_w2": "GPTQ W2", "billm": "BiLLM", "pbllm": "PB-LLM", "ptq161": "PTQ1.61 (demo preset)"}


def lora_dir(steps: int):
    return OUTPUTS / "preprocess" / f"lora_{steps}"


def _ptq161_demo(model: str) -> dict:
    from ptq161 import CalibConfig
    from ptq161.methods.ptq161 import PTQ161Config

    epochs, nsamples, seqlen = recipe_budget("demo")  # the demo recipe's budget with the paper's settings
    row = quantize_and_evaluate(
        "ptq161",
        PTQ161Config(epochs=epochs),
        CalibConfig(dataset=PAPERS_CALIB, nsamples=nsamples, seqlen=seqlen),
        WINDOWS,
        model=model,
    )
    row.pop("block_logs")
    return row


def run_lora(steps: int) -> dict:
    """Preprocess with ``steps`` LoRA steps, then FP and PTQ1.61 (demo) perplexity of the result."""
    import shutil

    from ptq161 import CalibConfig, Recipe
    from ptq161.methods.ptq161 import PTQ161Config
    from ptq161.pipeline.preprocess import preprocess, preset_settings
    from ptq161.utils import peak_rss_mb

    first_pass, lora = preset_settings("cpu")
    epochs, nsamples, seqlen = recipe_budget(first_pass)  # its budget with the paper's settings, as measured
    recipe = Recipe(
        "ptq161", PTQ161Config(epochs=epochs), CalibConfig(dataset=PAPERS_CALIB, nsamples=nsamples, seqlen=seqlen)
    )
    lora = lora.with_steps(steps)
    out = lora_dir(steps)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    res = preprocess("smollm2-135m", out, recipe=recipe, lora=lora, progress=False)
    seconds = time.perf_counter() - t0
    rss = peak_rss_mb()
    del res
    fp = fp_perplexities(WINDOWS, str(out))
    losses = json.loads((out / "ptq161_preprocess.json").read_text())["losses"]
    k = max(1, len(losses) // 10)
    return {
        "steps": steps,
        "lora": lora.to_dict(),
        "torch_threads": __import__("torch").get_num_threads(),
        "first_pass_preset": "demo",
        "first_pass_epochs": epochs,
        "preprocess_seconds": seconds,
        "preprocess_peak_rss_mb": rss,
        "loss_first": sum(losses[:k]) / k,
        "loss_last": sum(losses[-k:]) / k,
        "fp_ppl": fp,
        "ptq161_demo": _ptq161_demo(str(out)),
        "artifact": str(out.relative_to(RESULTS.parents[1])),
    }


def run_fig5(name: str, steps: int, nsamples: int, seqlen: int) -> dict:
    from ptq161 import CalibConfig
    from ptq161.methods import get_method

    method, opts = FIG5[name]
    cfg = get_method(method).config_class(**opts)
    row = quantize_and_evaluate(
        method,
        cfg,
        CalibConfig(dataset=PAPERS_CALIB, nsamples=nsamples, seqlen=seqlen),
        WINDOWS,
        model=str(lora_dir(steps)),
    )
    row.pop("block_logs")
    return {"method": method, "preprocessed_steps": steps, **row}


def run_concentration(steps_list: list[int]) -> dict:
    """Salient share per layer for the original and each preprocessed model; maps for MAP_LAYERS."""
    import torch

    from ptq161 import load_model
    from ptq161.data.corpora import calibration_windows
    from ptq161.eval.concentration import concentration_report, layer_statistics, save_salient_maps

    out: dict = {}
    weights, stats_by = {}, {}
    for tag, spec in [("original", "smollm2-135m"), *[(f"lora_{s}", str(lora_dir(s))) for s in steps_list]]:
        model, tok = load_model(spec)
        windows, src = calibration_windows(None, tok, nsamples=8, seqlen=256, seed=2)
        with torch.no_grad():
            stats = layer_statistics(model, windows, "mean")
        rep = concentration_report(model, stats)
        out[tag] = {"per_layer": rep, "mean": sum(rep.values()) / len(rep), "windows_source": src}
        weights[tag] = {n: model.get_submodule(n).weight.detach().clone() for n in MAP_LAYERS}
        stats_by[tag] = stats
    last = f"lora_{max(steps_list)}"
    maps = {n: (weights["original"][n], weights[last][n]) for n in MAP_LAYERS}
    # channels sorted by the original model's statistic so both panels share one x axis
    save_salient_maps(maps, stats_by["original"], RESULTS / "preprocess_maps.png", ("original", last))
    out["maps"] = {"file": "preprocess_maps.png", "layers": list(MAP_LAYERS), "preprocessed": last}
    return out


def plots(store: dict, steps_list: list[int], compare: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = max(steps_list)
    names, orig, pre = [], [], []
    for name in FIG5:
        row = store.get(f"fig5_{name}")
        if row and name in compare:
            names.append(LABELS[name])
            orig.append(compare[name]["wikitext2_ppl"])
            pre.append(row["wikitext2_ppl"])
    if "original_ptq161_demo" in store and f"lora_{last}" in store:
        names.append(LABELS["ptq161"])
        orig.append(store["original_ptq161_demo"]["wikitext2_ppl"])
        pre.append(store[f"lora_{last}"]["ptq161_demo"]["wikitext2_ppl"])
    if names:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], orig, 0.4, label="original")
        ax.bar([i + 0.2 for i in x], pre, 0.4, label=f"preprocessed ({last} LoRA steps)")
        ax.set_xticks(list(x), names)
        ax.set_yscale("log")
        ax.set_ylabel("WikiText-2 ppl (log)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "preprocess_fig5.png", dpi=110)
        plt.close(fig)
    pts = [(s, store[f"lora_{s}"]) for s in steps_list if f"lora_{s}" in store]
    if pts and "original_ptq161_demo" in store:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(
            [0] + [s for s, _ in pts],
            [store["original_ptq161_demo"]["wikitext2_ppl"]] + [r["ptq161_demo"]["wikitext2_ppl"] for _, r in pts],
            "o-",
            label="PTQ1.61 (demo) on it",
        )
        ax.plot(
            [0] + [s for s, _ in pts],
            [store["fp"]["wikitext2"]] + [r["fp_ppl"]["wikitext2"] for _, r in pts],
            "s-",
            label="FP (unquantized)",
        )
        ax.set_yscale("log")
        ax.set_xlabel("LoRA steps (256 tokens each; 0 = original model)")
        ax.set_ylabel("WikiText-2 ppl (log)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "preprocess_budget.png", dpi=110)
        plt.close(fig)


def render(store: dict, steps_list: list[int], args: argparse.Namespace) -> None:
    compare = json.loads((RESULTS / "compare.json").read_text())["rows"]
    fp = store["fp"]
    parts = []
    last = max(steps_list)
    rows = []
    for name in FIG5:
        row = store.get(f"fig5_{name}")
        if row and name in compare:
            o = compare[name]
            rows.append(
                (
                    LABELS[name],
                    round(o["wikitext2_ppl"], 2),
                    round(row["wikitext2_ppl"], 2),
                    round(o["c4_ppl"], 2),
                    round(row["c4_ppl"], 2),
                    round(row["stored_bits_per_weight"], 3),
                )
            )
    if "original_ptq161_demo" in store and f"lora_{last}" in store:
        o, p = store["original_ptq161_demo"], store[f"lora_{last}"]["ptq161_demo"]
        rows.append(
            (
                LABELS["ptq161"],
                round(o["wikitext2_ppl"], 2),
                round(p["wikitext2_ppl"], 2),
                round(o["c4_ppl"], 2),
                round(p["c4_ppl"], 2),
                round(p["stored_bits_per_weight"], 3),
            )
        )
    if rows:
        parts.append(
            f"## Fig. 5 analogue: methods on the original vs the preprocessed model ({last} LoRA steps)\n\n"
            + markdown_table(
                [
                    "method",
                    "WikiText-2 original",
                    "WikiText-2 preprocessed",
                    "C4 original",
                    "C4 preprocessed",
                    "bits/w",
                ],
                rows,
            )
            + "\n\n![Fig. 5 analogue](preprocess_fig5.png)"
        )
    budget = [
        (
            "0 (original)",
            "-",
            "-",
            round(fp["wikitext2"], 2),
            round(fp["c4"], 2),
            *(
                (
                    round(store["original_ptq161_demo"]["wikitext2_ppl"], 2),
                    round(store["original_ptq161_demo"]["c4_ppl"], 2),
                )
                if "original_ptq161_demo" in store
                else ("-", "-")
            ),
            "-",
        )
    ]
    for s in steps_list:
        r = store.get(f"lora_{s}")
        if r:
            budget.append(
                (
                    s,
                    f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}",
                    f"{round(r['preprocess_seconds'])} ({r.get('torch_threads', '?')} thr)",
                    round(r["fp_ppl"]["wikitext2"], 2),
                    round(r["fp_ppl"]["c4"], 2),
                    round(r["ptq161_demo"]["wikitext2_ppl"], 2),
                    round(r["ptq161_demo"]["c4_ppl"], 2),
                    round(r["preprocess_peak_rss_mb"]),
                )
            )
    parts.append(
        "## Table 9 analogue and effect vs budget\n\n"
        + markdown_table(
            [
                "LoRA steps",
                "LoRA loss (first -> last 10 %)",
                "preprocess s",
                "FP WikiText-2",
                "FP C4",
                "PTQ1.61 WikiText-2",
                "PTQ1.61 C4",
                "peak RSS MiB",
            ],
            budget,
        )
        + "\n\n![effect vs budget](preprocess_budget.png)"
    )
    conc = store.get("concentration")
    if conc:
        tags = [t for t in conc if t != "maps"]
        layers = list(conc["original"]["per_layer"])
        kinds = sorted({n.split(".", 3)[3] for n in layers})
        crow = []
        for kind in kinds:
            sel = [n for n in layers if n.endswith(kind)]
            crow.append((kind, *[f"{100 * sum(conc[t]['per_layer'][n] for n in sel) / len(sel):.1f}" for t in tags]))
        crow.append(("all layers", *[f"{100 * conc[t]['mean']:.1f}" for t in tags]))
        parts.append(
            "## Salient-weight concentration (share of the top-1 % |W| in the top-20 % input channels by mean "
            "|x|, in %; 20 % = no structure)\n\n"
            + markdown_table(["layer kind", *tags], crow)
            + f"\n\nMaps (top-1 % |W| positions, channels sorted by the original model's activation statistic, "
            f"top-20 % shaded): ![maps]({conc['maps']['file']})"
        )
    notes = note("preprocess", windows=WINDOWS)
    write_results(
        "preprocess",
        "Quantization preprocessing on smollm2-135m",
        "\n\n".join(parts),
        store,
        notes,
        keep_meta=store if args.render_only else None,
        steps=steps_list,
        windows=WINDOWS,
    )
    if not args.render_only:  # the committed PNGs stay as they were made
        plots(store, steps_list, compare)


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--steps", default="100,200,400", help="LoRA step counts (the largest is used for Fig. 5)")
    ap.add_argument("--nsamples", type=int, default=64, help="calibration windows of the Fig. 5 baselines")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--only", default="", help="comma-separated run names to do now (default: all)")
    args = ap.parse_args()
    steps_list = sorted(int(s) for s in args.steps.split(","))

    def job(name: str) -> dict:
        if name.startswith("lora_"):
            return run_lora(int(name.removeprefix("lora_")))
        if name == "original_ptq161_demo":
            return _ptq161_demo("smollm2-135m")
        if name.startswith("fig5_"):
            return run_fig5(name.removeprefix("fig5_"), max(steps_list), args.nsamples, args.seqlen)
        return run_concentration(steps_list)

    if serve_child(args, job):
        return
    store = stored("preprocess")
    if "fp" not in store:
        store["fp"] = stored("compare")["fp"]
    only = set(filter(None, args.only.split(",")))
    plan = ["original_ptq161_demo", *(f"lora_{s}" for s in steps_list), *(f"fig5_{n}" for n in FIG5), "concentration"]
    child_args = ["--steps", args.steps, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)]

    def after(_name: str) -> None:
        atomic_write_json(RESULTS / "preprocess.json", store)  # keep the row even if rendering fails
        render(store, steps_list, args)

    run_pending("benchmarks.preprocess", store, [n for n in plan if not only or n in only], args, child_args, after)
    render(store, steps_list, args)


if __name__ == "__main__":
    main()
