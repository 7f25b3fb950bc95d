"""``ptq161 report``: Markdown (and HTML) report of quantized outputs, with plots."""

from __future__ import annotations

import argparse

from ..api import evaluate_perplexity
from ..data.corpora import check_eval_name
from ..pipeline.report import read_output, write_report
from .common import add_data_dir, add_load_options, add_max_memory, csv_list, positive_int
from .ppl import load_for_perplexity


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "report",
        help="a Markdown / HTML report of quantized outputs: settings, bits by layer kind, loss curves, salient "
        "channels, perplexity against bits",
        description="Report one or more `ptq161 quantize` outputs: settings, stored bits per weight by layer kind, "
        "per-block loss curves, PTQ1.61's salient-channel maps; with --ppl each output's perplexity and, for "
        "several outputs, a perplexity-vs-true-bits plot (log scale) with the Pareto front.",
    )
    p.add_argument("dirs", nargs="+", help="output directories of `ptq161 quantize`")
    p.add_argument("--output", "-o", required=True, help="the report, a .md file (figures go to NAME_files/)")
    p.add_argument("--html", action="store_true", help="also write NAME.html with the figures embedded")
    p.add_argument("--title", default="", help="the report's title")
    p.add_argument("--ppl", action="store_true", help="evaluate each output's perplexity (needed for the plot)")
    p.add_argument("--datasets", type=csv_list, default=["wikitext2"], help="with --ppl (default: wikitext2)")
    p.add_argument("--max-windows", type=positive_int, default=8, help="with --ppl: first K windows (default 8)")
    p.add_argument("--seqlen", type=positive_int, default=2048, help="with --ppl: window length (default 2048)")
    add_data_dir(p)
    add_load_options(p)
    add_max_memory(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the outputs (evaluate them with --ppl) and write the report."""
    outputs = [read_output(d) for d in args.dirs]
    for name in args.datasets:
        check_eval_name(name)
    names = [o.label for o in outputs]
    for o in outputs:
        if names.count(o.label) > 1:
            o.label = str(o.path)
        if args.ppl:
            model, tok = load_for_perplexity(str(o.path), args, seqlen=args.seqlen)
            results = evaluate_perplexity(
                model, tok, args.datasets, seqlen=args.seqlen, max_windows=args.max_windows, data_dir=args.data_dir
            )
            o.ppl = {r.dataset: r.ppl for r in results}
            del model
    for path in write_report(outputs, args.output, html_too=args.html, title=args.title):
        print(path)
    return 0
