"""Diagnostic: FP PIQA (all 1838 items) through lm-eval under one numeric setup; per-item log-likelihoods to /tmp.

Usage: python benchmarks/piqa_batch_check.py BATCH_SIZE all|N [--dtype float32|float16|bfloat16] [--add-bos]

Measured 2026-11-24 (all 1838 items): batch size 1 and 16, float16 weights, and a BOS token
prepended (lm-eval's add_bos_token) each give acc 0.6431 / acc_norm 0.6431 (1182 / 1182).
"""

import argparse
import json

import torch
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from ptq161 import load_model
from ptq161.eval.zeroshot import local_task_dir

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("batch_size", type=int)
ap.add_argument("limit", help="'all' or a number of documents")
ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
ap.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS token (lm-eval add_bos_token)")
args = ap.parse_args()
limit = None if args.limit == "all" else int(args.limit)
model, tok = load_model("smollm2-135m", dtype=getattr(torch, args.dtype))
lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device="cpu", add_bos_token=args.add_bos)
with local_task_dir(["piqa"], None) as tdir:
    tm = TaskManager(include_path=str(tdir), include_defaults=False)
    res = simple_evaluate(
        model=lm, tasks=["piqa"], num_fewshot=0, limit=limit, task_manager=tm, log_samples=True, bootstrap_iters=0
    )
print(res["results"]["piqa"])
rows = [
    {
        "doc": s["doc_id"],
        "ll": [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"]],
        "acc": s["acc"],
        "acc_norm": s["acc_norm"],
    }
    for s in res["samples"]["piqa"]
]
tag = f"bs{args.batch_size}_{args.dtype}{'_bos' if args.add_bos else ''}"
json.dump(rows, open(f"/tmp/piqa_{tag}.json", "w"))
