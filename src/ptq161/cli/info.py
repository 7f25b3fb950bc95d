"""``ptq161 info``: bits per weight per layer and for the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PTQ161Error
from ..eval.report import markdown_table
from ..pipeline.output_dir import META, file_bits_per_weight, read_meta
from ..utils import atomic_write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("info", help="bits per weight of a quantized model directory")
    p.add_argument("dir", help="output directory of `ptq161 quantize`")
    p.add_argument("--json", help="write the bit accounting to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the bit accounting (and write it as JSON with ``--json``)."""
    meta = read_meta(args.dir) if Path(args.dir).is_dir() else None
    if meta is None:
        raise PTQ161Error(f"'{args.dir}' is not a ptq161 output (no {META})")
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
        disk = file_bits_per_weight(args.dir, bits["layers"])
        print(f"decoder linears, from the bytes of their tensors on disk: {disk:.4f} bits/weight")
    if "recipe" in meta:
        r = meta["recipe"]
        print(f"recipe {r['name']} (repeat it: ptq161 quantize MODEL --recipe {Path(args.dir) / META})")
    if "machine" in meta:
        m = meta["machine"]
        paths = ", ".join(f"{k}={v}" for k, v in m.get("code_paths", {}).items()) or "-"
        print(
            f"made on {m['cpu_model']} ({m.get('cpu_id', '?')}; features {', '.join(m.get('cpu_features', []))}), "
            f"torch kernels {m['torch_cpu_capability']}, {m['torch_threads']} threads; code paths: {paths}"
        )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "method": meta["method"],
                "config": meta["config"],
                "recipe": meta.get("recipe"),
                "machine": meta.get("machine"),
                "stored_bits_per_weight": bits["stored_bits_per_weight"],
                "paper_bits_per_weight": bits["paper_bits_per_weight"],
                "disk_bits_per_weight": disk,
                "weights_format": meta.get("weights_format", "dense"),
                "layers": bits["layers"],
            },
        )
    return 0
