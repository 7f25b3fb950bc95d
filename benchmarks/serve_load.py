"""64 concurrent clients x 16 requests each against `ptq161 serve`: all answered, latency, server memory.

    .venv/bin/python -m benchmarks.serve_load [--model DIR] [--clients 64] [--requests 16]

The server (`ptq161 serve` in its own process; default model: `ptq161 quantize smollm2-135m` as a user
runs it, written by benchmarks/general_calibration.py) answers every client's requests one after another
(the clients run concurrently, asyncio + httpx in this process): even requests a streamed chat
completion, odd ones a plain completion, greedy, `max_tokens` 8, each client its own prompt. A request
counts as answered when it returns 200 with its text, a finish reason and usage counts (a stream: when
its `[DONE]` arrives). Latency is from sending a request to its last byte. The server's resident
memory is sampled every 0.25 s; "growth" is its peak in the last quarter of the run minus its peak
in the first quarter (after the first requests have filled every cache).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from typing import Any

from benchmarks.common import OUTPUTS, bench_parser, write_results
from benchmarks.serve_speed import running_server
from ptq161.eval.report import markdown_table

MAX_TOKENS = 8


async def _request(client: Any, url: str, i: int, j: int) -> tuple[bool, float]:
    prompt = f"Client {i}, question {j}: what is the capital of country number {i * 16 + j}?"
    t0 = time.perf_counter()
    if j % 2 == 0:
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
                "temperature": 0, "stream": True}  # fmt: skip
        done = usage = False
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return False, time.perf_counter() - t0
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    usage = usage or bool(json.loads(line[6:]).get("usage"))
        return done and usage, time.perf_counter() - t0
    body = {"model": "m", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
    r = await client.post(url + "/v1/completions", json=body)
    ok = r.status_code == 200
    if ok:
        d = r.json()
        ok = bool(d["choices"][0]["finish_reason"]) and d["usage"]["completion_tokens"] >= 1
    return ok, time.perf_counter() - t0


async def _clients(url: str, clients: int, requests: int) -> list[tuple[bool, float]]:
    import httpx

    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:

        async def one(i: int) -> list[tuple[bool, float]]:
            out = []
            for j in range(requests):
                try:
                    out.append(await _request(client, url, i, j))
                except httpx.HTTPError:
                    out.append((False, float("nan")))
            return out

        per = await asyncio.gather(*(one(i) for i in range(clients)))
    return [r for rs in per for r in rs]


def _sample_rss(pid: int, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    import psutil

    p = psutil.Process(pid)
    while not stop.is_set():
        samples.append((time.perf_counter(), p.memory_info().rss))
        stop.wait(0.25)


def measure(model_dir: str, clients: int, requests: int) -> dict[str, Any]:
    """Answered count, latency percentiles and the server's memory over the run."""
    with running_server(model_dir) as (proc, url):
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, samples, stop), daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        results = asyncio.run(_clients(url, clients, requests))
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        alive = proc.poll() is None
    lat = sorted(s for ok, s in results if ok)
    quarter = wall / 4
    first = [rss for t, rss in samples if t - t0 <= quarter]
    last = [rss for t, rss in samples if t - t0 >= wall - quarter]
    mib = 1 / 2**20
    return {
        "requests": len(results),
        "answered": sum(ok for ok, _ in results),
        "lost": sum(not ok for ok, _ in results),
        "p50_s": statistics.median(lat),
        "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "max_s": lat[-1],
        "wall_s": wall,
        "rss_first_quarter_peak_mib": max(first) * mib,
        "rss_last_quarter_peak_mib": max(last) * mib,
        "rss_growth_mib": (max(last) - max(first)) * mib,
        "rss_samples": len(samples),
        "server_alive_after": alive,
    }


def main() -> None:
    ap = bench_parser(__doc__, redo=False, render_only=False)
    ap.add_argument("--model", default=str(OUTPUTS / "general_calibration" / "smollm2-135m" / "cpu_mix"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=16)
    args = ap.parse_args()
    r = measure(args.model, args.clients, args.requests)
    table = markdown_table(
        ["clients x requests", "answered", "lost", "p50 latency (s)", "p99 latency (s)", "wall (s)",
         "server RSS peak, first / last quarter (MiB)", "growth (MiB)"],
        [(f"{args.clients} x {args.requests}", r["answered"], r["lost"], round(r["p50_s"], 2), round(r["p99_s"], 2),
          round(r["wall_s"], 1), f"{r['rss_first_quarter_peak_mib']:.0f} / {r['rss_last_quarter_peak_mib']:.0f}",
          round(r["rss_growth_mib"], 1))],
    )  # fmt: skip
    model = args.model.replace(str(OUTPUTS.parent) + "/", "")
    write_results(
        "serve_load", "Concurrent clients against `ptq161 serve`", table, r,
        notes=__doc__.split("\n\n")[2], model=model, clients=args.clients, requests=args.requests,
        max_tokens=MAX_TOKENS,
    )  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
