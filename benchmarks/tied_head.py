"""One table for the embedding and the lm_head (issue 43: the whole file no larger than llama.cpp IQ2_XXS's).

Row ``files``: a packed output with an int8 embedding and a separate int8 lm_head (``--packed``; default the
qwen2.5-coder-1.5b smoke-recipe model of benchmarks.serve_speed) and what ``ptq161 convert --head TIED``
makes of it (``int8-tied``: the lm_head's int8 table, as stored, becomes the embedding's; stored once, read by
both): whole-file MiB (the manifest in ``ptq161.json``: weights, config, tokenizer), weights MiB, the
decoder-linear bits as stored (unchanged), the resident memory of a fresh process after ``ptq161.load``.
Row ``cost``: what one table costs in perplexity, measured on the FP model of ``--model`` (the model ptq161
evaluates as FP): its perplexity with its own embedding and with the lm_head's table as the embedding
(the only change ``-tied`` makes besides the int8 rounding both tables already get), first ``--windows``
windows of 2048 tokens of WikiText-2 test and C4. The Qwen2.5-Coder models here come from GGUF files that
store ``token_embd`` and ``output`` separately, quantized differently, although the released models tie
them (``tie_word_embeddings``); smollm2-135m is tied and stores one table anyway.

    PTQ161_DATA=../shared/data .venv/bin/python -m benchmarks.tied_head --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import OUTPUTS, bench_parser, command_line, stored, table_perplexities, write_results
from ptq161.eval.report import markdown_table

NAME = "tied_head"
ROWS = ("files", "cost")
PROBE = """
import json, sys
import ptq161
from ptq161.utils import current_rss_bytes
model, _ = ptq161.load(sys.argv[1])
print(json.dumps({"rss_mib": current_rss_bytes() / 2**20, "head": type(model.get_output_embeddings()).__name__}))
"""


def probe(path: Path) -> dict[str, Any]:
    """Load ``path`` in a fresh process: its RSS after loading and its head's type."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"loading {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def files_row(packed: Path, head: str) -> dict[str, Any]:
    """Sizes and resident memory of ``packed`` and of its ``head`` conversion."""
    from ptq161.api import convert
    from ptq161.pipeline.output_dir import read_meta

    out = OUTPUTS / NAME / f"{packed.name}-{head}"
    shutil.rmtree(out, ignore_errors=True)
    convert(packed, out, head=head)
    rows = {}
    for path in (packed, out):
        meta = read_meta(path)
        rows[meta.get("head", "int8") if path == out else f"{meta.get('head', 'int8')} (source)"] = {
            "dir": str(path),
            "file_mib": sum(f["bytes"] for f in meta["files"].values()) / 2**20,
            "weights_mib": sum(f["bytes"] for n, f in meta["files"].items() if n.endswith(".safetensors")) / 2**20,
            "decoder_linear_bits": meta["bits"]["stored_bits_per_weight"],
            **probe(path),
        }
    return rows


def cost_row(model_spec: str, windows: int) -> dict[str, Any]:
    """FP perplexity with the model's own embedding and with the lm_head's table as the embedding."""
    import torch

    from ptq161 import load_model
    from ptq161.models import get_adapter

    model, tok = load_model(model_spec)
    adapter = get_adapter(model)
    emb, lm = model.get_submodule(adapter.embed), model.get_submodule(adapter.lm_head)
    same = emb.weight is lm.weight
    diff = 0.0 if same else ((emb.weight - lm.weight).norm() / lm.weight.norm()).item()
    own = table_perplexities(model, tok, windows)
    if not same:
        with torch.no_grad():
            emb.weight.copy_(lm.weight)
    one = own if same else table_perplexities(model, tok, windows)
    return {"own": own, "one_table": one, "tables_equal": same, "relative_difference": diff, "windows": windows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    old = stored(NAME) if (Path(__file__).parent / "results" / f"{NAME}.json").exists() else {}
    r = {k: v for k, v in old.items() if k in (*ROWS, "made_by")}
    made_by = dict(r.get("made_by", {}))  # row -> the command and date that measured it
    if "files" in args.rows:
        r["files"] = files_row(Path(args.packed), args.head)
        made_by["files"] = command_line()
    if "cost" in args.rows:
        r["cost"] = {**r.get("cost", {}), args.model: cost_row(args.model, args.windows)}
        made_by[f"cost {args.model}"] = command_line()
    return {**r, "made_by": made_by}


def render(r: dict[str, Any]) -> str:
    out = []
    if "files" in r:
        head = ["embedding and lm_head", "whole file MiB", "weights MiB", "decoder-linear bits", "RSS after load MiB"]
        body = [
            (k, f"{v['file_mib']:.1f}", f"{v['weights_mib']:.1f}", f"{v['decoder_linear_bits']:.3f}",
             f"{v['rss_mib']:.0f}")
            for k, v in r["files"].items()
        ]  # fmt: skip
        out.append(markdown_table(head, body))
    if "cost" in r:
        head = ["FP model", "tables (relative difference)", "WikiText-2 own", "C4 own", "WikiText-2 one table",
                "C4 one table", "windows"]  # fmt: skip
        body = [
            (m, "one table" if c["tables_equal"] else f"two ({c['relative_difference']:.3f})",
             f"{c['own']['wikitext2']:.3f}", f"{c['own']['c4']:.3f}", f"{c['one_table']['wikitext2']:.3f}",
             f"{c['one_table']['c4']:.3f}", f"{c['windows']} x 2048 each")
            for m, c in r["cost"].items()
        ]  # fmt: skip
        out.append(markdown_table(head, body))
    out += [f"- {row}: `{cmd}`" for row, cmd in r.get("made_by", {}).items()]
    return "\n\n".join(out)


def main() -> None:
    ap = bench_parser(__doc__, redo=False)
    ap.add_argument("--packed", default=str(OUTPUTS / "serve_speed" / "qwen2.5-coder-1.5b-smoke"))
    ap.add_argument("--head", default="int8-tied", choices=("int8", "int8-tied", "int4-tied"))
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--rows", default=",".join(ROWS))
    args = ap.parse_args()
    args.rows = args.rows.split(",")
    r = stored(NAME) if args.render_only else run(args)
    table = render(r)
    write_results(
        NAME, "One table for the embedding and the lm_head", table, r, notes=__doc__.split("\n\n")[1],
        keep_meta=r if args.render_only else None, packed=args.packed, head=args.head,
    )  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
