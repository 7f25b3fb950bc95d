"""llama.cpp's 1-2-bit formats on ptq161's own evaluation windows: the bar issue 43 sets for a 1.6-bit model.

llama.cpp (the source archive of benchmarks/peers.py, sha256-checked: llama-cpp-python 0.3.36, llama.cpp
commit 0c1e570) is built for this CPU with its tools (``llama-imatrix``, ``llama-quantize``). The FP
model ptq161 evaluates (the dequantized GGUF of the model's package, as a Hugging Face directory) goes
through llama.cpp's ``convert_hf_to_gguf.py`` to an F32 GGUF; the importance matrix is computed by
``llama-imatrix`` on ptq161's default calibration text (``calibration_windows`` of the default recipe:
``--calib-nsamples`` windows of ``--calib-seqlen`` tokens of WikiText-2 + C4 train, seed 2, decoded to
text, in chunks of the same length); each type is ``llama-quantize --imatrix`` of the F32 file.
Every GGUF is evaluated on the exact token windows of ``ptq161 ppl`` (the first ``--windows`` windows
of 2048 tokens of WikiText-2 test and C4, GPTQ style; token ids fed to llama.cpp, no BOS, each window
from an empty cache, the mean next-token cross-entropy per window, exp of the mean over windows) by
``peer_runners/run_llamacpp.py ppl``. The F32 row checks the harness: it must give ptq161's FP
perplexity. Bits: the decoder linears' tensors as stored (``run_llamacpp.py bits``) and the whole file
(embedding and head included).

    PTQ161_DATA=../shared/data .venv/bin/python -m benchmarks.llamacpp_anchors --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import bench_parser, fp_perplexities, results_name, stored, write_results
from benchmarks.peers import NO_AMX, PEERS, RUNNERS, llamacpp_source, model_dir, venv_python
from ptq161.eval.report import markdown_table

TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "Q2_K")
PEER = "llamacpp_q4_0"  # the peers' llama.cpp venv (its llama_cpp package is built from the same source)
TOOLS = ("llama-imatrix", "llama-quantize")
SEQLEN = 2048


def build_tools() -> Path:
    """``llama-imatrix`` and ``llama-quantize`` built from the checked source for this CPU (once) -> bin dir."""
    build = PEERS / "llama.cpp-tools"
    bin_dir = build / "bin"
    if all((bin_dir / t).exists() for t in TOOLS):
        return bin_dir
    src = llamacpp_source() / "vendor" / "llama.cpp"
    configure = ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON"]
    configure += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}", "-DLLAMA_BUILD_TOOLS=ON"]
    configure += ["-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    configure += ["-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF"]
    print("  building llama.cpp's tools (several minutes) ...", file=sys.stderr, flush=True)
    subprocess.run(configure, check=True, capture_output=True)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build), "--target", *TOOLS, "-j", jobs], check=True, capture_output=True)
    return bin_dir


def run(cmd: list[str], what: str) -> str:
    """Run ``cmd``; its stdout, or a one-line exit naming ``what`` with the end of its stderr."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def calibration_text(model: str, where: Path, nsamples: int, seqlen: int) -> Path:
    """ptq161's default calibration windows of ``model``, decoded to text, one window after another."""
    from ptq161 import load_model
    from ptq161.data import calibration_windows
    from ptq161.pipeline.recipe import resolve_recipe

    calib = resolve_recipe(None).calib
    _, tok = load_model(model)
    windows, source = calibration_windows(calib.dataset, tok, nsamples=nsamples, seqlen=seqlen, seed=calib.seed)
    out = where / "calibration.txt"
    out.write_text("".join(tok.decode(w.tolist()) for w in windows))
    record = {"dataset": calib.dataset, "source": source, "nsamples": nsamples, "seqlen": seqlen, "seed": calib.seed}
    (where / "calibration.json").write_text(json.dumps(record))
    return out


def eval_windows(model: str, where: Path, windows: int) -> Path:
    """The token windows ``ptq161 ppl`` evaluates (WikiText-2 test and C4), as JSON for the runner."""
    from ptq161 import load_model
    from ptq161.data import eval_tokens
    from ptq161.eval.perplexity import windows_of

    _, tok = load_model(model)
    data = {name: windows_of(eval_tokens(name, tok).tokens, SEQLEN, windows).tolist() for name in ("wikitext2", "c4")}
    out = where / f"windows-{windows}.json"
    out.write_text(json.dumps(data))
    return out


def gguf_files(model: str, args: Any) -> dict[str, Path]:
    """F32 and every type's GGUF of ``model`` (made once, kept under outputs/peers/MODEL/anchors)."""
    from ptq161.models.loading import builtin_dir

    where = model_dir(model) / "anchors"
    where.mkdir(parents=True, exist_ok=True)
    py = str(venv_python(PEER))
    f32 = where / "model-f32.gguf"
    if not f32.exists():
        convert = str(llamacpp_source() / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py")
        tmp = f32.with_suffix(".partial")
        run([py, convert, str(builtin_dir(model)), "--outtype", "f32", "--outfile", str(tmp)], "convert_hf_to_gguf")
        tmp.rename(f32)
    tools = build_tools()
    imatrix = where / "imatrix.gguf"
    if not imatrix.exists():
        text = calibration_text(model, where, args.calib_nsamples, args.calib_seqlen)
        cmd = [str(tools / "llama-imatrix"), "-m", str(f32), "-f", str(text), "-c", str(args.calib_seqlen)]
        cmd += ["--chunks", str(args.calib_nsamples), "-t", str(args.threads), "--no-ppl", "-o", str(imatrix)]
        run(cmd, "llama-imatrix")
    files = {"F32": f32}
    for t in args.types:
        out = where / f"model-{t}.gguf"
        if not out.exists():
            tmp = out.with_suffix(".partial")
            cmd = [str(tools / "llama-quantize"), "--imatrix", str(imatrix), str(f32), str(tmp), t, str(args.threads)]
            run(cmd, f"llama-quantize {t}")
            tmp.rename(out)
        files[t] = out
    return files


def measure(model: str, args: Any) -> dict[str, Any]:
    """Rows of F32 and every type: bits, file size, WikiText-2 and C4 perplexity on ptq161's windows."""
    files = gguf_files(model, args)
    windows = eval_windows(model, model_dir(model) / "anchors", args.windows)
    py = str(venv_python(PEER))
    runner = str(RUNNERS / "run_llamacpp.py")
    rows: dict[str, Any] = {}
    for name, f in files.items():
        print(f"  evaluating {name} ...", file=sys.stderr, flush=True)
        info = json.loads(run([py, runner, "bits", str(f)], f"bits of {name}"))
        # the runner keeps each result beside its GGUF: a rerun evaluates only what is missing
        ppl = json.loads(run([py, runner, "ppl", str(f), str(windows), str(args.threads)], f"perplexity of {name}"))
        rows[name] = {**info, "ppl": {k: v["ppl"] for k, v in ppl.items()}, "window_nll": ppl}
    return {"rows": rows, "fp": fp_perplexities(args.windows, model), "imatrix": str(files["F32"].parent)}


def render(r: dict[str, Any], args: Any) -> str:
    fp = r["fp"]
    table_rows = [
        ("ptq161 FP (the same model, transformers)", "-", "-", f"{fp['wikitext2']:.2f}", f"{fp['c4']:.2f}", "1.00x")
    ]
    for name, row in r["rows"].items():
        worse = max(row["ppl"]["wikitext2"] / fp["wikitext2"], row["ppl"]["c4"] / fp["c4"])
        label = "llama.cpp F32 (harness check)" if name == "F32" else f"llama.cpp {name} + imatrix"
        table_rows.append((label, f"{row['decoder_linear_bits']:.2f}", f"{row['file_mib']:.0f}",
                           f"{row['ppl']['wikitext2']:.2f}", f"{row['ppl']['c4']:.2f}", f"{worse:.2f}x"))  # fmt: skip
    for label, bits, mib, ppl in ptq161_rows(args.model):
        worse = max(ppl["wikitext2"] / fp["wikitext2"], ppl["c4"] / fp["c4"])
        table_rows.append((label, f"{bits:.2f}", f"{mib:.0f}", f"{ppl['wikitext2']:.2f}", f"{ppl['c4']:.2f}",
                           f"{worse:.2f}x"))  # fmt: skip
    head = ["model file", "decoder-linear bits", "whole file MiB", "WikiText-2", "C4", "x FP (worse)"]
    return markdown_table(head, table_rows)


def ptq161_rows(model: str) -> list[tuple[str, float, float, dict[str, float]]]:
    """ptq161's stored results of ``model`` on the same windows, as (label, decoder-linear bits, whole file MiB,
    perplexities): the int8-head row of ``results/large_model.json`` (another run, labelled with its date)."""
    from benchmarks.common import RESULTS

    f = RESULTS / "large_model.json"
    if not f.is_file():
        return []
    r = json.loads(f.read_text())
    steps = r["steps"]
    if r["settings"].get("model") != model or not {"ptq161", "int8_convert", "int8_ppl"} <= set(steps):
        return []
    ppl = {k: steps["int8_ppl"][f"{k}_ppl"] for k in ("wikitext2", "c4")}
    label = f"ptq161 {r['settings'].get('preset', '')} preset, int8 head (large_model.json, {r['date'][:10]})"
    return [(label, steps["ptq161"]["stored_bits_per_weight"], steps["int8_convert"]["bytes"] / 2**20, ppl)]


def main() -> None:
    ap = bench_parser(__doc__, redo=False, render_only=True)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--types", type=lambda s: s.split(","), default=list(TYPES))
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--calib-nsamples", type=int, default=64)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    name = results_name("llamacpp_anchors", args.model, "")
    if shutil.which("cmake") is None and not args.render_only:
        raise SystemExit("building llama.cpp's tools needs cmake (and a C++ compiler)")
    r = stored(name) if args.render_only else measure(args.model, args)
    table = render(r, args)
    write_results(
        name, f"llama.cpp 1-2-bit formats on ptq161's windows: {args.model}", table, r,
        notes=__doc__.split("\n\n")[1], keep_meta=r if args.render_only else None,
        model=args.model, windows=args.windows, types=",".join(args.types),
    )  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
