"""Command-line interface: thin subcommands that parse options and call ``ptq161.api``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from .errors import PTQ161Error

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type factory: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def csv_list(text: str) -> list[str]:
    """argparse type: comma-separated names."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory laid out like shared/data (default: $PTQ161_DATA)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype (default: float32)"
    )


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """Options of the registered methods (each method accepts those its config has)."""
    g = p.add_argument_group("PTQ1.61 options")
    g.add_argument(
        "--ratio",
        type=_ratio,
        help="salient share: input channels at 4 bits (ptq161, default 0.2), weights at 8 bits (pbllm, default 0.1)",
    )
    g.add_argument(
        "--statistic",
        choices=["max", "mean"],
        help="activation statistic for the mask (default mean, the paper's; max is the reference code's)",
    )
    g.add_argument("--salient-range", choices=["salient", "row"], help="4-bit min/max over (default salient)")
    g.add_argument("--s-init", choices=["uncentred", "centred"], help="init of the scale s (default uncentred)")
    g.add_argument("--epochs", type=_non_negative_int, help="training epochs per block (0 = mask only)")
    g.add_argument("--batch-size", type=positive_int, help="calibration samples per optimizer step (default 1)")
    g = p.add_argument_group("baseline options")
    g.add_argument("--bits", type=positive_int, help="weight bits (rtn: 1-8, 1 = XNOR; gptq: 2-8)")
    g.add_argument(
        "--group-size",
        type=_non_negative_int,
        help="quantization group (rtn: any, gptq: 0 or 128; default 0 = per row)",
    )


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def cmd_ppl(args: argparse.Namespace) -> int:
    """``ptq161 ppl``: perplexity of a model on named datasets."""
    from .api import evaluate_perplexity, load_model
    from .data.corpora import check_eval_name
    from .eval.report import markdown_table, run_metadata
    from .utils import atomic_write_json

    for name in args.datasets or []:
        check_eval_name(name)
    model, tok = load_model(args.model, device=args.device, dtype=_dtype(args.dtype))
    results = evaluate_perplexity(
        model, tok, args.datasets, seqlen=args.seqlen, max_windows=args.max_windows, data_dir=args.data_dir
    )
    rows = [(r.dataset, r.ppl, r.windows, r.seqlen, r.tokens, round(r.tokens_per_s), r.source) for r in results]
    from . import artifact

    meta = artifact.read_meta(args.model) if Path(args.model).is_dir() else None
    quant = ""
    if meta:
        quant = f" (method {meta['method']}, {meta['bits']['stored_bits_per_weight']:.4f} bits/weight stored)"
    print(f"model: {args.model}{quant}")
    print(markdown_table(["dataset", "ppl", "windows", "seqlen", "tokens", "tok/s", "data"], rows))
    if args.json:
        meta = run_metadata(model=args.model, seqlen=args.seqlen, max_windows=args.max_windows, dtype=args.dtype)
        atomic_write_json(args.json, {**meta, "results": {r.dataset: r.to_dict() for r in results}})
    return 0


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


# CLI option -> config field; a method accepts an option only if its config has that field
_METHOD_OPTIONS = {
    "ratio": "salient_ratio",
    "bits": "bits",
    "group_size": "group_size",
    "statistic": "statistic",
    "salient_range": "salient_range",
    "s_init": "s_init",
    "epochs": "epochs",
    "batch_size": "batch_size",
}


def _method_config(args: argparse.Namespace, method_cls: type, preset_epochs: int):
    import dataclasses

    fields = {f.name for f in dataclasses.fields(method_cls.config_class)}
    overrides = {}
    for opt, field_name in _METHOD_OPTIONS.items():
        value = getattr(args, opt)
        if value is None:
            continue
        if field_name not in fields:
            flag = "--" + opt.replace("_", "-")
            raise PTQ161Error(f"method '{method_cls.name}' does not take {flag} (it takes: {_options_of(method_cls)})")
        overrides[field_name] = value
    if "epochs" in fields and "epochs" not in overrides:
        overrides["epochs"] = preset_epochs
    return method_cls.config_class(**overrides)


def _options_of(method_cls: type) -> str:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(method_cls.config_class)}
    flags = ["--" + opt.replace("_", "-") for opt, f in _METHOD_OPTIONS.items() if f in fields]
    return ", ".join(flags) or "no options"


def cmd_quantize(args: argparse.Namespace) -> int:
    """``ptq161 quantize``: quantize a model block by block and save the result."""
    from .api import quantize
    from .config import CalibConfig, get_preset
    from .methods.base import get_method

    preset = get_preset(args.preset)
    method_cls = get_method(args.method)
    cfg = _method_config(args, method_cls, preset.epochs)
    calib = CalibConfig(
        dataset=args.calib,
        nsamples=args.nsamples or preset.nsamples,
        seqlen=args.calib_seqlen or preset.seqlen,
        seed=args.seed,
    )
    output = args.output or f"ptq161-out/{args.model.rstrip('/').replace('/', '_')}-{args.method}-{args.preset}"
    res = quantize(
        args.model,
        args.method,
        method_config=cfg,
        calib=calib,
        output=output,
        resume=args.resume,
        data_dir=args.data_dir,
        device=args.device,
        int8_head=args.int8_head,
    )
    bits = res.meta["bits"]
    print(f"saved {output}")
    print(
        f"method {args.method}, preset {args.preset}: {calib.nsamples} x {calib.seqlen} tokens from "
        f"{res.meta['calibration_source']}, seed {calib.seed}"
    )
    print(
        f"bits/weight (decoder linears): stored {bits['stored_bits_per_weight']:.4f}, "
        f"paper formula {bits['paper_bits_per_weight']:.4f}"
    )
    print(f"time {res.meta['seconds']:.1f} s, peak RSS {res.meta['peak_rss_mb']:.0f} MiB")
    print(f"evaluate with: ptq161 ppl {output}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    """``ptq161 preprocess``: quantize, train a restorative LoRA, merge, save a plain model directory."""
    import dataclasses

    from .methods.base import get_method
    from .preprocess import preprocess, preset_settings

    calib, epochs, lora = preset_settings(args.preset)
    calib = dataclasses.replace(calib, dataset=args.calib, seed=args.seed)
    overrides = {
        k: getattr(args, k)
        for k in ("steps", "rank", "alpha", "dropout", "lr", "warmup", "schedule", "data", "save_every")
        if getattr(args, k) is not None
    }
    if args.lora_seqlen is not None:
        overrides["seqlen"] = args.lora_seqlen
    if args.lora_seed is not None:
        overrides["seed"] = args.lora_seed
    if "steps" in overrides:
        lora = lora.with_steps(overrides.pop("steps"))
    lora = dataclasses.replace(lora, **overrides)
    cfg = _method_config(args, get_method(args.method), epochs)
    res = preprocess(
        args.model,
        args.output,
        method=args.method,
        method_config=cfg,
        calib=calib,
        lora=lora,
        resume=args.resume,
        data_dir=args.data_dir,
    )
    losses = res.meta["losses"]
    k = max(1, len(losses) // 10)
    print(f"saved {res.output} (a plain model directory: quantize it like any model)")
    print(
        f"first pass {args.method} ({calib.nsamples} x {calib.seqlen} tokens); LoRA r={lora.rank} alpha={lora.alpha} "
        f"on {res.meta['lora_data_source']}: {lora.steps} steps x {lora.batch_size} x {lora.seqlen} tokens"
    )
    print(f"loss: first {k} steps {sum(losses[:k]) / k:.3f} -> last {k} steps {sum(losses[-k:]) / k:.3f}")
    print(f"time {res.meta['seconds']:.1f} s, peak RSS {res.meta['peak_rss_mb']:.0f} MiB")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``ptq161 info``: bits per weight per layer and for the model."""
    from . import artifact
    from .eval.report import markdown_table
    from .utils import atomic_write_json

    meta = artifact.read_meta(args.dir) if Path(args.dir).is_dir() else None
    if meta is None:
        raise PTQ161Error(f"'{args.dir}' is not a ptq161 output (no {artifact.META})")
    bits = meta["bits"]
    rows = [
        (name, b["numel"], b["paper_bits_per_weight"], b["stored_bits_per_weight"])
        for name, b in bits["layers"].items()
    ]
    rows.append(("decoder linears", bits["numel"], bits["paper_bits_per_weight"], bits["stored_bits_per_weight"]))
    print(f"{args.dir}: method {meta['method']}, model {meta['model']}, weights {meta.get('weights_format', 'dense')}")
    print(markdown_table(["layer", "weights", "bits/w (paper formula)", "bits/w (stored)"], rows))
    disk = None
    if meta.get("weights_format") == "packed":
        disk = artifact.file_bits_per_weight(args.dir, bits["layers"])
        print(f"decoder linears, from the bytes of their tensors on disk: {disk:.4f} bits/weight")
    if args.json:
        atomic_write_json(
            args.json,
            {
                "method": meta["method"],
                "config": meta["config"],
                "stored_bits_per_weight": bits["stored_bits_per_weight"],
                "paper_bits_per_weight": bits["paper_bits_per_weight"],
                "disk_bits_per_weight": disk,
                "weights_format": meta.get("weights_format", "dense"),
                "layers": bits["layers"],
            },
        )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``ptq161 generate``: greedy continuation of a prompt."""
    import torch

    from .api import load
    from .eval.speed import greedy_generate

    model, tok = load(args.model, device=args.device)
    ids = tok(args.prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise PTQ161Error("the prompt is empty")
    with torch.no_grad():
        new, prefill_s, decode_s = greedy_generate(model, ids.to(args.device), args.max_new_tokens, args.engine)
    print(args.prompt + tok.decode(new, skip_special_tokens=True))
    print(
        f"[{len(new)} tokens; prompt of {ids.shape[1]} tokens in {prefill_s:.2f} s (first call: includes loading "
        f"the kernels); decode {(len(new) - 1) / max(decode_s, 1e-9):.1f} tok/s; `ptq161 bench` measures warm speeds]",
        file=sys.stderr,
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``ptq161 eval``: zero-shot accuracy through lm-evaluation-harness on the local task files."""
    from .api import load_model
    from .eval.report import markdown_table, run_metadata
    from .eval.zeroshot import TASKS, evaluate_zeroshot, parse_tasks, require_lm_eval
    from .utils import atomic_write_json

    tasks = parse_tasks(args.tasks)
    require_lm_eval()
    model, tok = load_model(args.model, device=args.device, dtype=_dtype(args.dtype))
    if not args.keep_packed:
        from .packing.artifact import dequantize_model_in_place

        dequantize_model_in_place(model)
    res = evaluate_zeroshot(
        model, tok, tasks, limit=args.limit, batch_size=args.batch_size, data_dir=args.data_dir, seed=args.seed
    )
    rows = []
    for name in tasks:
        if name in res.unavailable:
            rows.append((name, "not available", "-", "-", "-", res.unavailable[name]))
            continue
        m = res.tasks[name]
        for metric in TASKS[name].metrics:
            rows.append(
                (
                    name,
                    metric,
                    f"{m[metric]:.4f}",
                    f"{m.get(metric + '_stderr', float('nan')):.4f}",
                    res.n_samples[name],
                    f"lm-eval task version {res.versions[name]}",
                )
            )
    print(f"model: {args.model}; 0-shot, {'all documents' if args.limit is None else f'first {args.limit} documents'}")
    print(markdown_table(["task", "metric", "value", "stderr", "documents", "note"], rows))
    print(f"[{res.seconds:.0f} s]", file=sys.stderr)
    if args.json:
        meta = run_metadata(model=args.model, tasks=tasks, limit=args.limit, batch_size=args.batch_size, seed=args.seed)
        atomic_write_json(args.json, {**meta, **res.to_dict()})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``ptq161 bench``: prefill and decode tokens/s of a model, optionally against another one."""
    from .api import load
    from .eval.report import markdown_table
    from .eval.speed import measure_speed
    from .utils import atomic_write_json, peak_rss_mb

    rows, results = [], {}
    for spec in [args.model, *([args.against] if args.against else [])]:
        model, tok = load(spec, device=args.device)
        text = "The history of the city begins in the early middle ages, when " * 64
        ids = tok(text, return_tensors="pt").input_ids[:, : args.prompt_tokens].to(args.device)
        r = measure_speed(model, ids, args.new_tokens, engine=args.engine)
        results[spec] = r.to_dict()
        rows.append(
            (
                spec,
                r.prompt_tokens,
                round(r.prefill_tokens_per_s, 1),
                r.new_tokens,
                round(r.decode_tokens_per_s, 2),
                "fused engine" if r.engine else "model forward",
            )
        )
        del model
    head = ["model", "prompt tokens", "prefill tok/s", "new tokens", "decode tok/s", "decode path"]
    print(markdown_table(head, rows))
    if args.against:
        a, b = results[args.model], results[args.against]
        print(
            f"decode speed-up {a['decode_tokens_per_s'] / b['decode_tokens_per_s']:.2f}x; "
            f"same greedy tokens as {args.against}: {a['tokens'] == b['tokens']} "
            "(a quantized model and its FP original usually differ)"
        )
    print(f"peak RSS of this process: {peak_rss_mb():.0f} MiB")
    if args.json:
        atomic_write_json(args.json, results)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``ptq161 demo``: the main job on the embedded model and default data, as a table."""
    from .demo import run_demo

    return run_demo(data_dir=args.data_dir, windows=args.windows)


def _add_engine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["auto", "on", "off"],
        default="auto",
        help="decode packed LLaMA-layout models with the fused numba engine (auto: when it applies; "
        "off: the model's own forward every step)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``ptq161`` argument parser with all subcommands."""
    from .data.corpora import EVAL_CORPORA

    parser = _Parser(
        prog="ptq161",
        description="Extremely low-bit post-training quantization (PTQ1.61) of LLaMA-family models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "ppl",
        help="perplexity on WikiText-2 / C4 / a text file",
        description="Perplexity with the GPTQ protocol: non-overlapping seqlen windows, remainder dropped.",
    )
    p.add_argument("model", help="smollm2-135m, a local model directory (FP or ptq161 output) or a hub id")
    p.add_argument(
        "--datasets",
        type=csv_list,
        default=None,
        help=f"comma-separated: {', '.join(EVAL_CORPORA)} (default: wikitext2 if in the data dir, else wiki-sample)",
    )
    p.add_argument("--seqlen", type=positive_int, default=2048, help="window length in tokens (default: 2048)")
    p.add_argument("--max-windows", type=positive_int, default=None, help="evaluate only the first K windows")
    p.add_argument("--json", help="write results and settings to this JSON file")
    _add_common(p)
    p.set_defaults(func=cmd_ppl)

    from .config import PRESETS
    from .methods.base import METHODS, get_method

    get_method("ptq161")  # registers the built-in methods
    p = sub.add_parser(
        "quantize",
        epilog="methods and their options: "
        + "; ".join(f"{name}: {_options_of(cls)}" for name, cls in sorted(METHODS.items())),
        help="quantize a model block by block (PTQ1.61 by default)",
        description="Quantize MODEL block by block and save a model directory that `ptq161 ppl` and "
        "`ptq161 info` read. Presets: "
        + "; ".join(f"{k}: {v.nsamples} x {v.seqlen} tokens, {v.epochs} epochs ({v.why})" for k, v in PRESETS.items()),
    )
    p.add_argument("model", help="smollm2-135m, a local model directory or a hub id")
    p.add_argument("--method", default="ptq161", help="quantization method (default: ptq161); see the list below")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS), help="budget preset (default: cpu)")
    p.add_argument("--output", help="output directory (default: ptq161-out/MODEL-METHOD-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    p.add_argument(
        "--int8-head",
        action="store_true",
        help="also store the embedding and lm_head as per-row int8 (smaller, faster decoding)",
    )
    p.add_argument("--calib", help="calibration corpus: wikitext2, c4, wiki-sample, text:PATH (default: wikitext2)")
    p.add_argument("--nsamples", type=positive_int, help="calibration windows (default: from the preset)")
    p.add_argument("--calib-seqlen", type=positive_int, help="tokens per calibration window (default: preset)")
    p.add_argument("--seed", type=int, default=2, help="calibration sampling seed (default: 2, as the paper)")
    _add_method_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_quantize)

    from .preprocess import PREPROCESS_PRESETS

    p = sub.add_parser(
        "preprocess",
        help="quantization preprocessing: restorative LoRA on the quantized model, merged into a new model",
        description="Quantize MODEL (PTQ1.61 by default), train a LoRA on the quantized model with the causal-LM "
        "loss on pretraining-like text (not an evaluation split), merge it (W' = W_hat + alpha/r * B A) and save a "
        "plain model directory that `ptq161 quantize` accepts. Defaults: the reference recipe (r 64, alpha 16, "
        "dropout 0.1, q/k/v/gate/up/down, AdamW lr 1e-4, cosine, warm-up). Presets: "
        + "; ".join(
            f"{k}: first pass '{v.quant_preset}', {v.steps} steps x {v.seqlen} tokens ({v.why})"
            for k, v in PREPROCESS_PRESETS.items()
        ),
    )
    p.add_argument("model", help="smollm2-135m, a local model directory or a hub id")
    p.add_argument("--output", required=True, help="output directory (a plain Hugging Face model directory)")
    p.add_argument("--method", default="ptq161", help="first-pass quantization method (default: ptq161)")
    p.add_argument("--preset", default="cpu", choices=list(PREPROCESS_PRESETS), help="budget preset (default: cpu)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    p.add_argument("--calib", help="first-pass calibration corpus (default: wikitext2)")
    p.add_argument("--seed", type=int, default=2, help="first-pass calibration seed (default: 2)")
    g = p.add_argument_group("LoRA options")
    g.add_argument("--steps", type=positive_int, help="optimizer steps (default: from the preset)")
    g.add_argument("--lora-seqlen", type=positive_int, help="tokens per training sequence (default: preset)")
    g.add_argument("--rank", type=positive_int, help="LoRA rank (default 64)")
    g.add_argument("--alpha", type=positive_int, help="LoRA alpha (default 16; merge factor alpha/rank)")
    g.add_argument("--dropout", type=float, help="LoRA dropout (default 0.1)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4)")
    g.add_argument("--warmup", type=_non_negative_int, help="warm-up steps (default: preset, at most steps/10)")
    g.add_argument("--schedule", choices=["cosine", "linear", "constant"], help="lr schedule (default cosine)")
    g.add_argument("--data", help="training text: c4 (C4 train sample, default), wikitext2:valid, text:PATH")
    g.add_argument("--lora-seed", type=int, help="seed of the LoRA init, dropout and data order (default 0)")
    g.add_argument("--save-every", type=positive_int, help="checkpoint every N steps (default 50)")
    _add_method_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("info", help="bits per weight of a quantized model directory")
    p.add_argument("dir", help="output directory of `ptq161 quantize`")
    p.add_argument("--json", help="write the bit accounting to this JSON file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="greedy text generation with a model or a quantized directory")
    p.add_argument("model", help="a ptq161 output directory, smollm2-135m, a local model directory or a hub id")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate (default: 32)")
    _add_engine_option(p)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=cmd_generate)

    from .eval.zeroshot import PAPER_TASKS

    p = sub.add_parser(
        "eval",
        help="zero-shot tasks (PIQA, ARC, HellaSwag, WinoGrande, LAMBADA) through lm-evaluation-harness, offline",
        description="0-shot accuracy with lm-eval's own task definitions and metrics, on the local copies of the "
        "datasets in the data directory (needs the optional extra: pip install 'ptq161[eval]'). RACE has no "
        "offline copy here and is reported as unavailable.",
    )
    p.add_argument("model", help="a ptq161 output directory (packed or dense), smollm2-135m, a model dir or hub id")
    p.add_argument(
        "--tasks",
        default=",".join(t for t in PAPER_TASKS if t != "race"),
        help=f"comma-separated, from: {', '.join(PAPER_TASKS)} (default: all available)",
    )
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N documents of each task")
    p.add_argument("--batch-size", type=positive_int, default=8, help="lm-eval batch size (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="lm-eval seeds (default: 0; 0-shot needs none)")
    p.add_argument(
        "--keep-packed",
        action="store_true",
        help="score with the packed modules (same numbers, slower) instead of their dequantized dense weights",
    )
    p.add_argument("--json", help="write metrics, task versions, sample counts and settings to this JSON file")
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="batch-1 prefill and decode speed (optionally against another model)")
    p.add_argument("model", help="a ptq161 output directory or any model spec")
    p.add_argument("--against", help="a second model to compare with in the same process, e.g. smollm2-135m")
    p.add_argument("--prompt-tokens", type=positive_int, default=128, help="prompt length (default: 128)")
    p.add_argument("--new-tokens", type=positive_int, default=64, help="tokens to decode (default: 64)")
    p.add_argument("--json", help="write the timings to this JSON file")
    _add_engine_option(p)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="quantize smollm2-135m and compare with FP (what `make demo` runs)")
    p.add_argument("--windows", type=positive_int, default=4, help="evaluation windows of 2048 tokens (default: 4)")
    p.add_argument("--data-dir", help="data directory laid out like shared/data (default: $PTQ161_DATA)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ptq161`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PTQ161Error as e:
        print(f"ptq161: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ptq161: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
