"""llama.cpp through llama-cpp-python, four commands:

``python run_llamacpp.py quantize IN_F32_GGUF OUT_GGUF`` writes a Q4_0 file with llama.cpp's own
quantizer (``llama_model_quantize``, its default settings, the same as ``llama-quantize IN OUT Q4_0``);
``python run_llamacpp.py MODEL_GGUF IDS_JSON NEW_TOKENS THREADS RUNS`` times one prompt as the other
runners do: prefill is the time from handing over the prompt (one ``llama_decode`` of the whole
prompt) to the first greedy token (argmax of the last logits); decode is the time of the other
``NEW_TOKENS - 1`` tokens, each one ``llama_decode`` of one token over the KV cache plus its argmax.
``python run_llamacpp.py ppl MODEL_GGUF WINDOWS_JSON THREADS`` prints (JSON) each corpus's perplexity on the
given token windows (``{corpus: [[id, ...], ...]}``): every window evaluated from an empty cache as given
(no BOS added), its mean next-token cross-entropy from llama.cpp's logits, the perplexity the exp of the
mean over windows (ptq161's protocol, ``ptq161.eval.perplexity``).
``python run_llamacpp.py bits MODEL_GGUF`` prints (JSON) the bits per weight of the decoder linears
(``blk.N.attn_{q,k,v,output}`` and ``blk.N.ffn_{gate,up,down}`` weights, bytes as stored) and of the whole file.
"""

import ctypes
import json
import os
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np
from timing import time_and_report


def quantize(src: str, dst: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize returned {rc}")


DECODER_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def perplexities(model_path: str, windows_file: str, threads: int) -> dict:
    windows = json.loads(open(windows_file).read())
    seqlen = max(len(w) for ws in windows.values() for w in ws)
    llm = llama_cpp.Llama(
        model_path=model_path, n_ctx=seqlen, n_batch=seqlen, n_ubatch=512, n_threads=threads,
        n_threads_batch=threads, logits_all=True, verbose=False,
    )  # fmt: skip
    out = {}
    for name, wins in windows.items():
        nlls = []
        for w in wins:
            llm.reset()
            llm.eval(w)
            logits = np.asarray(llm.scores[: len(w) - 1], dtype=np.float64)
            top = logits.max(axis=1, keepdims=True)
            logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
            nlls.append(float(np.mean(logz - logits[np.arange(len(w) - 1), w[1:]])))
            print(f"{name}: window {len(nlls)}/{len(wins)} nll {nlls[-1]:.4f}", file=sys.stderr, flush=True)
        out[name] = {"ppl": float(np.exp(np.mean(nlls))), "window_nll": nlls}
    return out


def bits(model_path: str) -> dict:
    import os

    from gguf import GGUFReader

    reader = GGUFReader(model_path)
    weights = bytes_ = 0
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in DECODER_LINEARS and parts[3] == "weight":
            weights += int(t.n_elements)
            bytes_ += int(t.n_bytes)
    return {
        "decoder_linear_bits": 8 * bytes_ / weights,
        "decoder_linear_weights": weights,
        "file_mib": os.path.getsize(model_path) / 2**20,
        "types": sorted({t.tensor_type.name for t in reader.tensors}),
    }


def main() -> None:
    if sys.argv[1] == "quantize":
        quantize(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1] == "ppl":  # kept beside the GGUF: the same file and windows are evaluated once
        model_path, windows_file = sys.argv[2], sys.argv[3]
        kept = Path(f"{model_path}.ppl-{Path(windows_file).stem}.json")
        key = {"bytes": os.path.getsize(model_path), "windows": Path(windows_file).name}
        if kept.is_file() and json.loads(kept.read_text())["key"] == key:
            print(json.dumps(json.loads(kept.read_text())["ppl"]))
            return
        result = perplexities(model_path, windows_file, int(sys.argv[4]))
        kept.write_text(json.dumps({"key": key, "threads": int(sys.argv[4]), "ppl": result}))
        print(json.dumps(result))
        return
    if sys.argv[1] == "bits":
        print(json.dumps(bits(sys.argv[2])))
        return
    model_path, ids_file, new_tokens, threads, runs = sys.argv[1:6]
    new_tokens, threads, runs = int(new_tokens), int(threads), int(runs)
    ids = json.loads(open(ids_file).read())
    llm = llama_cpp.Llama(
        model_path=model_path,
        n_ctx=len(ids) + new_tokens + 8,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    def once(prompt: list[int], n: int) -> tuple[float, float, list[int], dict]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        out = [greedy()]
        t1 = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([out[-1]])
            out.append(greedy())
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out, {}

    time_and_report(once, ids, new_tokens, runs, "llama.cpp (llama-cpp-python)", llama_cpp.__version__)


if __name__ == "__main__":
    main()
