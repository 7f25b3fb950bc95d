"""Where the time goes (issue 18): the decode step, the lookup kernel, packed prefill and a block-training step.

One process, one sitting, on the packed cpu-preset smollm2-135m of ``benchmarks.heads`` (int8 head,
``--packed``) and the FP model:

- ``decode``: one fused-engine step split into the 30 decoder layers and the final norm + lm_head,
  medians over steps at one cache position, with 2 threads and with 1 (the parallel efficiency),
  with each sign-sum kernel (byte tables; nibble tables in registers, the default on AVX-512 CPUs);
- ``lookup``: layer 0's gate_proj (1536 x 576) on one thread: the whole kernel with byte tables
  (tables, sign lookups, 4-bit part) and the sign lookups alone, as lookups per nanosecond, and the
  whole kernel with nibble tables; then the same in a child process whose numba compiles for an
  AVX2-only CPU (``NUMBA_CPU_NAME=haswell`` and AVX-512 switched off), the code AVX2 machines run,
  which is why the nibble-table kernel is the default on AVX-512 CPUs only;
- ``prefill``: the same gate_proj on a 128-token prompt: rebuilding its rows (grouped columns, the
  prefill path) against the BLAS product they feed, and the FP32 BLAS rate;
- ``training``: PTQ1.61 training steps of block 0 with the cpu preset's settings (8 windows of 256
  random tokens): seconds per step and the share of ``aten::mm`` in the torch profile.

Medians of repeated calls after a warm-up; the ratios, not the absolute times, carry over between
machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import OUTPUTS, bench_parser, note, stored, timing_note, write_results
from benchmarks.heads import shown
from ptq161.eval.report import markdown_table


def median_ms(fn: Callable[[], object], n: int = 30, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``n`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def set_threads(n: int) -> None:
    """torch's and numba's thread pools both to ``n`` threads."""
    import numba
    import torch

    torch.set_num_threads(n)
    numba.set_num_threads(n)


def decode_split(packed, permute: bool) -> dict:
    """Engine step, decoder layers and norm + lm_head (ms) with 2 threads and with 1; sign sums by
    nibble tables (``permute``) or byte tables."""
    import torch

    from ptq161.runtime import DecodeEngine

    out = {}
    for threads in (2, 1):
        set_threads(threads)
        eng = DecodeEngine(packed, max_len=256, permute=permute)
        eng.prefill(torch.arange(128)[None] + 100)
        h = eng._hidden_step(5, 128)
        with torch.no_grad():
            out[f"threads{threads}"] = {
                "step_ms": median_ms(lambda eng=eng: eng.step(5, 128), n=100),
                "layers_ms": median_ms(lambda eng=eng: eng._hidden_step(5, 128), n=100),
                "head_ms": median_ms(lambda eng=eng, h=h: eng.lm_head(eng.final_norm(h)), n=100),
                "layers": len(eng.layers),
            }
    set_threads(2)
    return out


def lookup_kernel(packed) -> dict:
    """One thread: the whole lookup kernel on gate_proj of layer 0 and its sign lookups alone (microseconds)."""
    import numba

    from ptq161.primitives import kernels as k

    set_threads(1)
    mod = packed.model.layers[0].mlp.gate_proj
    w = mod.kernel_buffers(False)
    sal, sign, codes = w.sal_idx, w.sign, w.codes
    groups = sign.shape[1]
    x = np.random.default_rng(0).standard_normal(mod.in_features).astype(np.float32)
    out = np.empty(mod.out_features, np.float32)
    lut = np.empty((groups, 256), np.float32)
    xp = np.empty(8 * groups, np.float32)
    xe = np.empty(codes.shape[1], np.float32)
    xo = np.empty(codes.shape[1], np.float32)

    @numba.njit(nogil=True, fastmath=True)
    def lookups(sign, lut, out):  # the sign pass of ``_rows`` alone, one row at a time
        for i in range(sign.shape[0]):
            p = np.float32(0.0)
            for g in range(sign.shape[1]):
                p += lut[g, sign[i, g]]
            out[i] = p

    whole = median_ms(lambda: k.linear_chunk(0, 1, x, w, out, lut, xp, xe, xo, False), n=200) * 1e3
    signs = median_ms(lambda: lookups(sign, lut, out), n=200) * 1e3
    wp = mod.kernel_buffers(True)
    lut16 = np.empty((groups, 32), np.float32)  # two 16-entry tables per sign byte, compact as the engine's
    nibble = median_ms(lambda: k.linear_chunk(0, 1, x, wp, out, lut16, xp, xe, xo, True), n=200) * 1e3
    set_threads(2)
    n_lookups = sign.shape[0] * groups
    return {
        "shape": [mod.out_features, mod.in_features],
        "salient": int(sal.shape[0]),
        "whole_us": whole,
        "whole_nibble_us": nibble,
        "lookups_us": signs,
        "lookups_per_ns": n_lookups / (signs * 1e3),
    }


AVX2_ENV = {  # numba's code for an AVX2-only CPU (Haswell's features), on whatever CPU runs the benchmark
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+lzcnt,+mmx,+movbe,+popcnt,"
    "+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,+fxsr,+sahf",
}


def lookup_kernel_avx2(packed_dir: str) -> dict:
    """``lookup_kernel`` in a child process whose numba compiles for an AVX2-only CPU (own cache dir)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, **AVX2_ENV, "NUMBA_CACHE_DIR": cache}
        cmd = [sys.executable, "-m", "benchmarks.profile_speed", "--kernel-only", "--packed", packed_dir]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def prefill_split(packed) -> dict:
    """gate_proj of layer 0 on 128 tokens: rows rebuilt (grouped), their BLAS product, the whole forward (ms)."""
    import torch

    mod = packed.model.layers[0].mlp.gate_proj
    m, n = mod.out_features, mod.in_features
    from ptq161.primitives.kernels import kernel_threads, packed_matmul

    x = torch.randn(1, 128, n)
    w = mod.grouped_rows(slice(0, m))
    flat, out, bufs = x[0].numpy(), np.empty((128, m), np.float32), mod.kernel_buffers(True)
    with torch.no_grad():
        rows = median_ms(lambda: mod.grouped_rows(slice(0, m)))
        blas = median_ms(lambda: torch.nn.functional.linear(x, w))
        whole = median_ms(lambda: mod(x))
        nibble = median_ms(lambda: packed_matmul(flat, bufs, out, kernel_threads()))
    return {
        "rebuild_ms": rows,
        "blas_ms": blas,
        "forward_ms": whole,
        "nibble_ms": nibble,
        "gflops": 2 * 128 * m * n / (blas * 1e6),
    }


def training_step(model) -> dict:
    """PTQ1.61 block 0, cpu-preset settings, 8 windows x 256 tokens: s per step and aten::mm's share."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.common import block_zero
    from ptq161 import resolve_recipe
    from ptq161.methods import BlockContext
    from ptq161.methods.ptq161 import PTQ161, PTQ161Config

    _adapter, _ids, block, linears, x, call, y, stats = block_zero(model)
    settings = resolve_recipe("cpu").method_config.to_dict()

    def run(epochs: int) -> float:
        ctx = BlockContext(0, block, linears, x, x.clone(), y, stats, call)
        cfg = PTQ161Config(**{**settings, "epochs": epochs})
        t0 = time.perf_counter()
        PTQ161(cfg).quantize_block(ctx)
        return time.perf_counter() - t0

    state = {k: v.clone() for k, v in block.state_dict().items()}
    run(1)  # warm-up
    block.load_state_dict(state)
    t3 = run(3)
    block.load_state_dict(state)
    t1 = run(1)
    block.load_state_dict(state)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(1)
    block.load_state_dict(state)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    mm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key == "aten::mm")
    return {"seconds_per_step": (t3 - t1) / 16, "mm_share": mm / total, "windows": 8, "seqlen": 256}


STORED = ("decode", "lookup", "lookup_avx2", "prefill", "training", "nibble_default", "timing_contended")


def render(store: dict, args) -> None:
    d, lk, pf, tr = (store[k] for k in ("decode", "lookup", "prefill", "training"))
    if "threads2" in d:  # results from before the nibble-table kernel: one split, the byte tables
        d = {"lookup": d}
    default = "nibble" if store.get("nibble_default") else "lookup"
    two, one = d[default]["threads2"], d[default]["threads1"]
    per_layer = 1e3 * two["layers_ms"] / two["layers"]
    head_share = 100 * two["head_ms"] / two["step_ms"]
    gain = one["layers_ms"] / two["layers_ms"]
    others = [
        (f"decode step, 2 threads, {kind} sign sums", f"{v['threads2']['step_ms']:.2f} ms",
         f"{1e3 / v['threads2']['step_ms']:.1f} tok/s; layers {v['threads2']['layers_ms']:.2f} ms, "
         f"{v['threads2']['layers_ms'] / two['layers_ms']:.2f}x the default's")
        for kind, v in d.items() if kind != default
    ]  # fmt: skip
    nibble_kernel = (
        [("  same layer, nibble-table kernel, 1 thread", f"{lk['whole_nibble_us']:.0f} us",
          f"{lk['whole_us'] / lk['whole_nibble_us']:.2f}x the byte-table kernel's speed")]
        if "whole_nibble_us" in lk else []
    )  # fmt: skip
    if "lookup_avx2" in store:
        av = store["lookup_avx2"]
        nibble_kernel += [
            ("  same layer, compiled for AVX2 only: byte-table kernel", f"{av['whole_us']:.0f} us", ""),
            ("  same layer, compiled for AVX2 only: nibble-table kernel", f"{av['whole_nibble_us']:.0f} us",
             f"{av['whole_us'] / av['whole_nibble_us']:.2f}x the byte-table kernel's speed"),
        ]  # fmt: skip
    table = [
        (f"decode step, 2 threads, {default} sign sums (this CPU's default)", f"{two['step_ms']:.2f} ms",
         f"{1e3 / two['step_ms']:.1f} tok/s"),
        ("  30 decoder layers", f"{two['layers_ms']:.2f} ms", f"{per_layer:.0f} us a layer"),
        ("  final norm + int8 lm_head", f"{two['head_ms']:.2f} ms", f"{head_share:.0f} % of a step"),
        ("decode step, 1 thread", f"{one['step_ms']:.2f} ms", f"layers {gain:.2f}x the 2-thread time"),
        *others,
        (f"lookup kernel, gate_proj {lk['shape'][0]} x {lk['shape'][1]}, 1 thread", f"{lk['whole_us']:.0f} us",
         f"sign lookups alone {lk['lookups_us']:.0f} us ({lk['lookups_per_ns']:.2f} lookups/ns, 8 weights each)"),
        *nibble_kernel,
        ("prefill, gate_proj on 128 tokens (the module's forward)", f"{pf['forward_ms']:.2f} ms",
         f"rows rebuilt {pf['rebuild_ms']:.2f} ms + BLAS {pf['blas_ms']:.2f} ms ({pf['gflops']:.0f} GFLOP/s)"),
        *([("  same, many-token nibble-table kernel", f"{pf['nibble_ms']:.2f} ms",
            f"{pf['blas_ms'] / pf['nibble_ms']:.2f}x the speed of the dense fp32 product alone")]
          if "nibble_ms" in pf else []),
        ("block-training step (cpu preset, block 0)", f"{1e3 * tr['seconds_per_step']:.0f} ms",
         f"aten::mm {100 * tr['mm_share']:.0f} % of the profiled time"),
    ]  # fmt: skip
    extra = f"\n\n* timings contended: {store['timing_contended']}" if store.get("timing_contended") else ""
    write_results(
        "profile_speed",
        "Where the time goes: decode, lookup kernel, prefill, block training (smollm2-135m, packed cpu preset)",
        markdown_table(["part", "time", "detail"], table),
        {k: store[k] for k in STORED if k in store},
        note("profile_speed") + extra,
        keep_meta=store if args.render_only else None,
        packed=shown(args.packed),
    )


def main() -> None:
    ap = bench_parser(__doc__, redo=False)
    ap.add_argument("--packed", default=str(OUTPUTS / "heads" / "int8"), help="a packed int8-head output")
    ap.add_argument("--kernel-only", action="store_true", help="print the kernel timings as JSON (child mode)")
    args = ap.parse_args()
    if args.kernel_only:
        import json

        from ptq161.api import load

        print(json.dumps(lookup_kernel(load(args.packed)[0].eval())))
        return
    if args.render_only:
        render(stored("profile_speed"), args)
        return
    from ptq161.api import load

    set_threads(2)
    contended = timing_note()
    packed = load(args.packed)[0].eval()
    from ptq161.primitives.kernels import PERMUTE_SIGNS

    decode = {kind: decode_split(packed, kind == "nibble") for kind in ("lookup", "nibble")}
    store = {"decode": decode, "lookup": lookup_kernel(packed), "prefill": prefill_split(packed)}
    store["lookup_avx2"] = lookup_kernel_avx2(args.packed)
    store["nibble_default"] = PERMUTE_SIGNS
    store["training"] = training_step(load("smollm2-135m")[0])
    store["timing_contended"] = contended
    render(store, args)
    print((OUTPUTS.parent / "benchmarks" / "results" / "profile_speed.md").read_text())


if __name__ == "__main__":
    main()
