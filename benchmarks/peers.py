"""Peers (issue 18): ptq161's packed model beside onnxruntime-genai, OpenVINO GenAI and dense fp32.

One prompt (the first ``--prompt-tokens`` tokens of ``ptq161 bench``'s text), ``--new-tokens`` greedy
tokens forced (no early stop), ``--threads`` threads everywhere, medians of ``--runs`` timed runs
after a warm-up, every row in its own fresh process:

- ``fp32``: the dense model through transformers (ptq161's ``measure_speed``, the model's forward);
- ``ptq161``: the packed output ``--packed`` (default: the int8-head cpu-preset model of ``benchmarks.heads``,
  what ``ptq161 quantize smollm2-135m`` writes)
  through the fused decode engine;
- ``ort_int4``: onnxruntime-genai's model builder, int4 block 32, MatMul and Gather quantized (the
  embedding and the tied head in int4), run by ``peer_runners/run_ort.py``;
- ``openvino_int4``: optimum-intel's ``export openvino --weight-format int4 --group-size 64 --ratio 1``
  (128 does not divide 576; the head stays int8, optimum's default), run by OpenVINO GenAI
  (``peer_runners/run_openvino.py``);
- ``llamacpp_q4_0``: llama.cpp (commit 0c1e570, as vendored by llama-cpp-python 0.3.36, whose PyPI
  release is a source archive only: the script downloads it, checks its sha256 and builds it with
  ``GGML_NATIVE=ON``, i.e. for this CPU's instruction set minus AMX tiles, about 8 minutes on 2 cores). The model is
  llama.cpp's own ``convert_hf_to_gguf.py`` of the FP model (f32) quantized to Q4_0 by llama.cpp's
  quantizer with its defaults; run by ``peer_runners/run_llamacpp.py``.

``--model`` picks another FP model (issue 18 asks for Qwen2.5-Coder-1.5B too): then ``--packed`` names
ptq161's output of it (``--packed-preset`` its preset, for the label), the peers' models are kept under
``outputs/peers/MODEL/`` and the results go to ``results/peers_MODEL.md``.

Each peer gets its own venv under ``outputs/peers/`` made by this script with pinned versions
(optimum-intel needs transformers < 5.6, older than ptq161's). Timing refuses to start while other
processes use more than 5 % of the CPU (with 2 threads on 2 cores they stall the thread pools);
``--allow-busy`` times anyway and marks the rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

from benchmarks.common import (
    OUTPUTS,
    bench_parser,
    note,
    results_name,
    run_pending,
    serve_child,
    stored,
    timing_note,
    write_results,
)
from ptq161.eval.report import markdown_table

ROWS = ("fp32", "ptq161", "ort_int4", "openvino_int4", "llamacpp_q4_0")
PEER_ROWS = ROWS[2:]
DEFAULT_MODEL = "smollm2-135m"
LABEL = {
    "fp32": "transformers fp32 (dense)",
    "ptq161": "ptq161 packed ({preset} preset, {head} head), fused engine",
    "ort_int4": "onnxruntime-genai int4 (block 32, embedding + head int4)",
    "openvino_int4": "OpenVINO GenAI int4 g64 (head int8)",
    "llamacpp_q4_0": "llama.cpp Q4_0 (commit 0c1e570, built for this CPU)",
}
PEERS = Path(OUTPUTS) / "peers"
RUNNERS = Path(__file__).resolve().parent / "peer_runners"
# torch first (the exporters import it; both builds lie on this machine's disk), then the runtime
VENVS = {
    "ort_int4": ["torch==2.13.0", "onnxruntime-genai==0.18.0", "onnxruntime==1.32.0", "onnx==1.23.2", "onnx-ir"],
    "openvino_int4": ["torch==2.14.1", "optimum-intel==2.2.0", "openvino-genai==2026.4.1.0", "nncf==3.4.0"],
    # torch, transformers and sentencepiece for llama.cpp's convert_hf_to_gguf.py; the package itself
    # is built from the checked source archive (``llamacpp_source``)
    "llamacpp_q4_0": ["torch==2.13.0", "numpy", "transformers", "sentencepiece"],
}
EXTRA = {"ort_int4": ["transformers"], "openvino_int4": ["transformers<5.6"], "llamacpp_q4_0": []}
LLAMACPP_SDIST = "llama_cpp_python-0.3.36.tar.gz"
LLAMACPP_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# for this CPU, but without AMX tiles: they need the kernel's permission, which this VM does not give
# (llama.cpp's AMX matmul died with SIGILL on ``tilezero``); explicit -mno-* win over -march=native in gcc
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LLAMACPP_CMAKE = (
    f"-DGGML_NATIVE=ON '-DCMAKE_C_FLAGS={NO_AMX}' '-DCMAKE_CXX_FLAGS={NO_AMX}' "
    "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF"
)
BUSY_LIMIT = 0.05
RATIO_TEXT = (  # (key, what it divides, target)
    ("decode_vs_fastest_peer", "ptq161 decode / fastest peer's decode", "1.3x"),
    ("prefill_vs_dense", "ptq161 prefill / dense fp32 prefill", "at least 1x"),
    ("prefill_vs_llamacpp", "ptq161 prefill / llama.cpp Q4_0 prefill", "at least 1x"),
)
RATIOS = tuple(key for key, _, _ in RATIO_TEXT)
RUNNER = {"ort_int4": "run_ort.py", "openvino_int4": "run_openvino.py", "llamacpp_q4_0": "run_llamacpp.py"}
MODEL_FILE = {"llamacpp_q4_0": "model-q4_0.gguf"}  # runners given a file; the others get the directory


def llamacpp_source() -> Path:
    """llama-cpp-python's source tree (llama.cpp vendored in it), downloaded once and checked by sha256."""
    tree = PEERS / LLAMACPP_SDIST.removesuffix(".tar.gz")
    if (tree / ".complete").exists():
        return tree
    archive = PEERS / LLAMACPP_SDIST
    if not archive.exists():
        name, version = LLAMACPP_SDIST.removesuffix(".tar.gz").rsplit("-", 1)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, "-d", str(PEERS), f"{name.replace('_', '-')}=={version}"], check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != LLAMACPP_SHA256:
        archive.unlink()
        raise SystemExit(f"{LLAMACPP_SDIST}: sha256 {digest}, expected {LLAMACPP_SHA256}; removed it")
    shutil.rmtree(tree, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(PEERS, filter="data")
    (tree / ".complete").write_text(LLAMACPP_SHA256 + "\n")
    return tree


def venv_python(row: str) -> Path:
    """The peer's interpreter, creating its venv with the pinned packages on first use."""
    where = PEERS / f"venv-{row}"
    py = where / "bin" / "python"
    stamp = where / ".installed"
    if not stamp.exists():
        print(f"  creating {where} ...", file=sys.stderr, flush=True)
        subprocess.run([sys._base_executable, "-m", "venv", str(where)], check=True)  # the interpreter, not .venv's
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, VENVS[row][0]], check=True)
        subprocess.run([*pip, *VENVS[row], *EXTRA[row]], check=True)
        if row == "llamacpp_q4_0":
            src = llamacpp_source()
            env = {**os.environ, "CMAKE_ARGS": LLAMACPP_CMAKE, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
            print("  building llama.cpp (a few minutes) ...", file=sys.stderr, flush=True)
            subprocess.run([*pip, str(src), str(src / "vendor" / "llama.cpp" / "gguf-py")], check=True, env=env)
        frozen = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
        stamp.write_text(frozen.stdout)
    return py


def model_dir(model: str) -> Path:
    """Where the peers' models of ``model`` are kept: ``outputs/peers/`` for the default model, else a
    subdirectory named after the model (the venvs and llama.cpp's source are shared)."""
    return PEERS if model == DEFAULT_MODEL else PEERS / model


def export(row: str, fp_dir: Path, model: str = DEFAULT_MODEL) -> Path:
    """The peer's int4 model of ``fp_dir`` (built once, kept under ``model_dir(model)``)."""
    out = model_dir(model) / row
    if (out / ".complete").exists():
        return out
    py = str(venv_python(row))
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    scratch: list[Path] = []  # intermediate files removed once the model is complete
    if row == "llamacpp_q4_0":
        tmp.mkdir(parents=True)
        convert = str(llamacpp_source() / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py")
        scratch.append(tmp / "model-f32.gguf")
        steps = [
            [py, convert, str(fp_dir), "--outtype", "f32", "--outfile", str(scratch[0])],
            [py, str(RUNNERS / RUNNER[row]), "quantize", str(scratch[0]), str(tmp / MODEL_FILE[row])],
        ]
    elif row == "ort_int4":
        cmd = [py, "-m", "onnxruntime_genai.models.builder", "-i", str(fp_dir), "-o", str(tmp), "-p", "int4"]
        cmd += [
            "-e",
            "cpu",
            "-c",
            str(model_dir(model) / "ort-cache"),
            "--extra_options",
            "op_types_to_quantize=MatMul/Gather",
        ]
        steps = [cmd]
    else:
        cmd = [py, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(fp_dir)]
        cmd += ["--task", "text-generation-with-past"]
        cmd += ["--weight-format", "int4", "--group-size", "64", "--ratio", "1.0", str(tmp)]
        steps = [cmd]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"exporting {row} failed:\n{done.stderr[-3000:]}")
    for path in scratch:
        path.unlink()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    (out / ".complete").write_text("".join(" ".join(cmd) + "\n" for cmd in steps))
    return out


def dir_mib(path: Path) -> float:
    """Bytes of the files under ``path`` (model files, tokenizer included), in MiB."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def prompt_ids(fp_dir: Path, n: int) -> list[int]:
    """The first ``n`` tokens of ``ptq161 bench``'s prompt text under the model's tokenizer."""
    from transformers import AutoTokenizer

    from ptq161.cli.bench import PROMPT_TEXT

    ids = AutoTokenizer.from_pretrained(fp_dir)(PROMPT_TEXT).input_ids[:n]
    if len(ids) != n:
        raise SystemExit(f"the prompt text has only {len(ids)} tokens")
    return list(ids)


def run_ptq161(spec: str, ids: list[int], args: argparse.Namespace, engine: str) -> dict:
    """Medians of ptq161's ``measure_speed`` over ``args.runs`` runs (one warm-up inside each)."""
    import torch

    from ptq161 import load
    from ptq161.runtime import measure_speed

    torch.set_num_threads(args.threads)
    model, _ = load(spec)
    x = torch.tensor([ids])
    runs = [measure_speed(model, x, args.new_tokens, engine=engine) for _ in range(args.runs)]
    return {
        "prefill_tokens_per_s": statistics.median(r.prefill_tokens_per_s for r in runs),
        "decode_tokens_per_s": statistics.median(r.decode_tokens_per_s for r in runs),
        "runs": [r.to_dict() | {"tokens": None} for r in runs],
        "tokens": runs[0].tokens,
        "engine": runs[0].engine,
    }


def run_row(name: str, args: argparse.Namespace) -> dict:
    """One row, in this fresh process: build what it needs, then time it."""
    from ptq161.models.loading import builtin_dir
    from ptq161.pipeline.output_dir import read_meta

    fp_dir = builtin_dir(args.model)
    ids = prompt_ids(fp_dir, args.prompt_tokens)
    label = LABEL[name]
    if name == "fp32":
        where, bits = fp_dir, 32.0
    elif name == "ptq161":
        where = Path(args.packed)
        meta = read_meta(where)
        if meta is None:
            raise SystemExit(f"{where} is not a ptq161 output: run benchmarks.heads first")
        bits = meta["bits"]["stored_bits_per_weight"]
        label = LABEL[name].format(preset=args.packed_preset, head=meta.get("head") or "fp32")
    else:
        where, bits = export(name, fp_dir, args.model), None
    contended = timing_note(BUSY_LIMIT)
    if contended and not args.allow_busy:
        raise SystemExit(f"{contended}: not timing (--allow-busy to force)")
    if name in ("fp32", "ptq161"):
        res = run_ptq161(str(where), ids, args, engine="off" if name == "fp32" else "auto")
    else:
        ids_file = PEERS / "prompt_ids.json"
        ids_file.write_text(json.dumps(ids))
        model_arg = where / MODEL_FILE[name] if name in MODEL_FILE else where
        argv = [str(venv_python(name)), str(RUNNERS / RUNNER[name]), str(model_arg), str(ids_file)]
        argv += [str(args.new_tokens), str(args.threads), str(args.runs)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        **res,
        "label": label,
        "model_dir": str(where),
        "files_mib": dir_mib(where),
        **({"stored_bits_per_weight": bits} if bits is not None else {}),
        **({"timing_contended": contended} if contended else {}),
    }


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy continuations share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def ratio(key: str, rows: dict) -> float | None:
    """One of RATIOS from the rows of one round (None when a row it needs is missing)."""
    if "ptq161" not in rows:
        return None
    mine = rows["ptq161"]
    if key == "decode_vs_fastest_peer":
        peers = [rows[n]["decode_tokens_per_s"] for n in PEER_ROWS if n in rows]
        return mine["decode_tokens_per_s"] / max(peers) if peers else None
    other = rows.get("fp32" if key == "prefill_vs_dense" else "llamacpp_q4_0")
    return None if other is None else mine["prefill_tokens_per_s"] / other["prefill_tokens_per_s"]


def merge_rounds(rounds: list[dict]) -> dict:
    """Each row as in its first round, with prefill / decode tok/s the medians over the rounds."""
    merged = {}
    for name in rounds[0]:
        runs = [rnd[name] for rnd in rounds if name in rnd]
        merged[name] = {
            **runs[0],
            **{k: statistics.median(r[k] for r in runs) for k in ("prefill_tokens_per_s", "decode_tokens_per_s")},
            "rounds": [{k: r[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s")} for r in runs],
        }
        if any(r.get("timing_contended") for r in runs):
            merged[name]["timing_contended"] = "; ".join(
                r["timing_contended"] for r in runs if r.get("timing_contended")
            )
    return merged


def packed_origin(args: argparse.Namespace) -> str:
    """How ``--packed`` was made, from its ``ptq161.json`` (empty without one), plus ``--packed-note``."""
    from ptq161.pipeline.output_dir import read_meta

    meta = read_meta(Path(args.packed)) if Path(args.packed).exists() else None
    if meta is None or not meta.get("seconds"):
        return ""
    return (
        f"\n\nptq161's model (its `ptq161.json`): quantized in {meta['seconds']:.0f} s "
        f"({meta['seconds'] / 60:.1f} min), peak RSS {meta['peak_rss_mb']:.0f} MiB, "
        f"{meta['bits']['stored_bits_per_weight']:.4f} stored bits per weight of the decoder linears."
    ) + (f" {args.packed_note}" if args.packed_note else "")


def render(store: dict, args: argparse.Namespace) -> None:
    rows = store["rows"]
    fp_tokens = rows.get("fp32", {}).get("tokens")
    table = []
    for name in ROWS:
        if name not in rows:
            continue
        r = rows[name]
        bits = f"{r['stored_bits_per_weight']:.2f}" if "stored_bits_per_weight" in r else "-"
        same = "-" if fp_tokens is None or name == "fp32" else str(common_prefix(r["tokens"], fp_tokens))
        mark = " *" if r.get("timing_contended") else ""
        table.append(
            (
                r.get("label", LABEL[name].format(preset="cpu", head="int8")) + mark,
                bits,
                f"{r['files_mib']:.0f}",
                f"{r['prefill_tokens_per_s']:.0f}",
                f"{r['decode_tokens_per_s']:.1f}",
                same,
            )
        )
    head = ["runtime", "stored bits/weight (decoder linears)", "files MiB", "prefill tok/s", "decode tok/s"]
    head.append(f"first tokens equal to fp32's (of {args.new_tokens})")
    extra = ""
    rounds = store.get("rounds") or [rows]
    for key, text, target in RATIO_TEXT:
        values = [v for v in (ratio(key, rnd) for rnd in rounds) if v is not None]
        if not values:
            continue
        store[key] = statistics.median(values)
        spread = f" (rounds: {', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""
        extra += f"\n\n{text}: {store[key]:.2f}x{spread}; target {target}."
    if args.model == DEFAULT_MODEL:
        extra = "\n\n" + note("peers", "smollm2") + extra
    else:
        packed = os.path.relpath(args.packed, OUTPUTS.parent)
        about = note("peers", "other_model", model=args.model, packed=packed, preset=args.packed_preset)
        extra = "\n\n" + about + extra + packed_origin(args)
    if any(r.get("timing_contended") for r in rows.values()):
        extra += "\n\n\\* timed while other processes used the CPU (`--allow-busy`): not comparable."
    write_results(
        results_name("peers", args.model, DEFAULT_MODEL),
        f"Decode and prefill against other runtimes ({args.model}, batch 1)",
        markdown_table(head, table),
        {"rows": rows, **{k: store[k] for k in (*RATIOS, "rounds") if k in store}},
        note("peers", prompt=args.prompt_tokens, new=args.new_tokens, threads=args.threads, runs=args.runs)
        + f" Rounds: {len(store.get('rounds') or [0])}: the whole set of rows timed again in the same order "
        "each round; the table gives each row's median over the rounds and each ratio is the median of the "
        "per-round ratios (this machine's speed drifts by up to 2x over minutes, so a ratio within one round "
        "is what compares)." + extra,
        keep_meta=store if args.render_only else None,
        model=args.model,
        packed=args.packed,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        threads=args.threads,
        runs=args.runs,
    )


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--model", default="smollm2-135m", help="the FP model every runtime starts from")
    ap.add_argument(
        "--packed",
        help="ptq161's packed output (default for smollm2-135m: the int8-head cpu-preset model of benchmarks.heads; "
        "required for another --model)",
    )
    ap.add_argument("--packed-preset", default="cpu", help="the preset --packed was quantized with (its label)")
    ap.add_argument("--packed-note", default="", help="a sentence on how --packed was made (e.g. contention)")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row and round (their median)")
    ap.add_argument("--rounds", type=int, default=3, help="times the whole set of rows is timed (medians)")
    ap.add_argument("--allow-busy", action="store_true", help="time even when other processes use the CPU")
    args = ap.parse_args()
    if args.packed is None:
        if args.model != DEFAULT_MODEL:
            ap.error(f"--packed is required for --model {args.model}")
        args.packed = str(OUTPUTS / "heads" / "int8")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    if serve_child(args, lambda name: run_row(name, args)):
        return
    store = stored(results_name("peers", args.model, DEFAULT_MODEL))
    store.setdefault("rows", {})
    child = ["--model", args.model, "--packed", args.packed, "--packed-preset", args.packed_preset]
    child += ["--prompt-tokens", str(args.prompt_tokens)]
    child += ["--new-tokens", str(args.new_tokens), "--threads", str(args.threads), "--runs", str(args.runs)]
    child += ["--allow-busy"] if args.allow_busy else []
    if not args.render_only:
        names = args.rows.split(",")
        store["rounds"] = []
        for k in range(args.rounds):
            print(f"round {k + 1} of {args.rounds}", flush=True)
            store["rounds"].append(run_pending("benchmarks.peers", {}, names, args, child))
            store["rows"] = merge_rounds(store["rounds"])
            render(store, args)
    render(store, args)


if __name__ == "__main__":
    main()
