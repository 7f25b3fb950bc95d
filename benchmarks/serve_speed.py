"""Streaming decode through `ptq161 serve` against the same decoding in process.

    .venv/bin/python -m benchmarks.serve_speed [--model DIR] [--label NAME]

The model (default: `ptq161 quantize smollm2-135m` as a user runs it, written by
benchmarks/general_calibration.py; another with --model, its results in serve_speed_LABEL) is decoded
greedily from the same 128 prompt tokens for 128 new tokens (`ignore_eos`: the count does not depend on
where the model would end its text), three times each way after one warm-up:
- in process: ``ptq161.runtime.generate.Generation`` (the code the server runs), tokens/s after the first;
- through the server: `ptq161 serve` in its own process, a streamed `/v1/completions` read by httpx in
  this process; time to first token (request sent to first text event) and tokens/s after the first.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.common import OUTPUTS, bench_parser, write_results
from ptq161.eval.report import markdown_table

DEFAULT_MODEL = OUTPUTS / "general_calibration" / "smollm2-135m" / "cpu_mix"
PROMPT = "The history of the city begins in the early middle ages, when " * 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(model_dir: str, runs: int) -> dict[str, Any]:
    """Tokens/s of ``Generation`` on the fused engine (or the forward, as the server would pick)."""
    from ptq161 import load
    from ptq161.runtime.generate import Generation, context_length, decode_path, pick_engine

    model, tok = load(model_dir, verify=False)
    ids = tok(PROMPT, return_tensors="pt").input_ids[:, :128]
    engine = pick_engine(model, "auto", context_length(model))
    rates, ttfts = [], []
    for i in range(runs + 1):
        gen = Generation(model, tok, ids, 128, engine=engine, ignore_eos=True)
        t0 = time.perf_counter()
        it = iter(gen)
        next(it)
        t1 = time.perf_counter()
        for _ in it:
            pass
        t2 = time.perf_counter()
        if i:  # the first run warms up
            rates.append((len(gen.tokens) - 1) / (t2 - t1))
            ttfts.append(t1 - t0)
    return {"tokens_per_s": statistics.median(rates), "ttft_s": statistics.median(ttfts),
            "prompt_tokens": ids.shape[1], "prompt": ids[0].tolist(),
            "path": decode_path(model, "auto", context_length(model))}  # fmt: skip


@contextlib.contextmanager
def running_server(model_dir: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`ptq161 serve MODEL_DIR` in its own process (served as model "m"), once /health answers: (process, url)."""
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "ptq161", "serve", model_dir, "--port", str(port), "--no-verify", "--name", "m"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"server did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(30)


def through_server(model_dir: str, runs: int, prompt: list[int]) -> dict[str, Any]:
    """TTFT and tokens/s of a streamed completion from `ptq161 serve` in its own process."""
    import httpx

    with running_server(model_dir) as (_proc, url):
        rates, ttfts, counts = [], [], []
        body = {"model": "m", "prompt": prompt, "max_tokens": 128, "temperature": 0, "stream": True, "ignore_eos": True}
        for i in range(runs + 1):
            t0 = time.perf_counter()
            first = last = None
            tokens = 0
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
                    elif event["choices"][0]["text"]:
                        last = time.perf_counter()
                        first = first or last
            if i and first is not None and last is not None and tokens > 1:
                ttfts.append(first - t0)
                rates.append((tokens - 1) / (last - first))
                counts.append(tokens)
        return {"tokens_per_s": statistics.median(rates), "ttft_s": statistics.median(ttfts), "tokens": counts}


def main() -> None:
    ap = bench_parser(__doc__, redo=False, render_only=False)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--label", help="results file serve_speed_LABEL (default: serve_speed for the default model)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="in process then server, this many times (ratio: median)")
    args = ap.parse_args()
    if not os.path.isdir(args.model):
        raise SystemExit(f"{args.model}: not a directory (the default is written by benchmarks.general_calibration)")
    rounds = []
    for _ in range(args.rounds):  # the machine drifts: each round's ratio compares neighbours in time
        local = in_process(args.model, args.runs)
        rounds.append((local, through_server(args.model, args.runs, local["prompt"])))
    ratios = [srv["tokens_per_s"] / loc["tokens_per_s"] for loc, srv in rounds]
    ratio = statistics.median(ratios)
    local, server = rounds[ratios.index(ratio)] if len(ratios) % 2 else rounds[0]
    table = markdown_table(
        ["way", "decode tokens/s", "time to first token (s)", "decode path"],
        [("in process (Generation)", round(local["tokens_per_s"], 1), round(local["ttft_s"], 3), local["path"]),
         ("streamed through `ptq161 serve`", round(server["tokens_per_s"], 1), round(server["ttft_s"], 3), "same")],
    )  # fmt: skip
    table += (f"\n\nserver / in process: {ratio:.1%} of the tokens/s (median of {args.rounds} rounds: "
              f"{', '.join(f'{r:.1%}' for r in ratios)}; the rows are the median round's); "
              f"prompt of {local['prompt_tokens']} tokens")  # fmt: skip
    name = f"serve_speed_{args.label}" if args.label else "serve_speed"
    model = args.model.replace(str(OUTPUTS.parent) + "/", "")
    write_results(name, "Streaming through the server against in-process decoding", table,
                  {"in_process": local, "server": server, "ratio": ratio, "ratios": ratios, "model": model,
                   "rounds": [{"in_process": loc, "server": srv} for loc, srv in rounds]},
                  notes=__doc__.split("\n\n")[2], model=model)  # fmt: skip


if __name__ == "__main__":
    main()
