"""The OpenAI-compatible server on a tiny packed model, through real clients (the official ``openai``
package and plain HTTP): answers, streaming, stop strings, seeds, usage counts, and every bad input."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from ptq161.api import load
from ptq161.runtime.engine import DecodeEngine
from ptq161.runtime.generate import Generation
from ptq161.serve import ServedModel, create_app
from tests.helpers import quantize_tiny, save_model_dir, tiny_llama

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
KEY = "sk-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, served: ServedModel, api_key: str | None = None) -> None:
        self.port = _free_port()
        config = uvicorn.Config(create_app(served, api_key), host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    text = root / "t.txt"
    from tests.helpers import SAMPLE_TEXT

    text.write_text(SAMPLE_TEXT)
    src = save_model_dir(tiny_llama(), root / "src")
    quantize_tiny(src, text, root / "q")
    tok_cfg = json.loads((root / "q" / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    (root / "q" / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return str(root / "q")


@pytest.fixture(scope="module")
def served(packed):
    served = ServedModel("tiny")
    served.load(lambda: load(packed, verify=False))
    assert served.error is None and served.engine is not None  # the fused engine serves it
    return served


@pytest.fixture(scope="module")
def server(served):
    s = _Server(served, api_key=KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def _chat(client, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], **kw)


def test_chat_completion_with_usage_and_the_engines_greedy_tokens(client, packed):
    r = _chat(client, max_tokens=12, temperature=0)
    model, tok = load(packed, verify=False)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    want, _, _ = DecodeEngine(model, max_len=64).generate(ids, 12)
    assert r.usage.prompt_tokens == ids.shape[1] and r.usage.completion_tokens == 12
    assert r.usage.total_tokens == ids.shape[1] + 12 and r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == tok.decode(want, skip_special_tokens=True)


def test_streaming_gives_the_same_text_and_usage(client):
    whole = _chat(client, max_tokens=12, temperature=0)
    chunks = list(_chat(client, max_tokens=12, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(chunks) >= 3
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 12


def test_a_stop_string_ends_the_text_before_it(client):
    full = client.completions.create(model="tiny", prompt="ab", max_tokens=16, temperature=0).choices[0].text
    stop = full[5:7]
    assert stop and full.find(stop) >= 0
    r = client.completions.create(model="tiny", prompt="ab", max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.find(stop)] and r.choices[0].finish_reason == "stop"


def test_a_seed_repeats_a_sampled_answer(client):
    a, b, c = (
        client.completions.create(model="tiny", prompt="ab", max_tokens=16, temperature=1.0, seed=s).choices[0].text
        for s in (5, 5, 6)
    )
    assert a == b and a != c


def _post(server, path: str, body, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30, **kw)


OK = {"model": "tiny", "prompt": "ab", "max_tokens": 2}


@pytest.mark.parametrize(
    "body,status,code",
    [
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_json"),
        ({**OK, "model": "other"}, 404, "model_not_found"),
        ({**OK, "max_tokens": 0}, 400, "invalid_request"),
        ({**OK, "max_tokens": 1000}, 400, "context_length_exceeded"),  # tiny model: context 512
        ({**OK, "prompt": "x" * 600}, 400, "context_length_exceeded"),
        ({**OK, "frequency_of_cats": 1}, 400, "invalid_request"),
        ({**OK, "temperature": -1}, 400, "invalid_request"),
        ({**OK, "prompt": "x" * (2 << 20)}, 413, "body_too_large"),
    ],
)
def test_bad_requests_get_their_json_error_and_the_server_keeps_answering(server, body, status, code):
    r = _post(server, "/v1/completions", body)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    ok = _post(server, "/v1/completions", OK)
    assert ok.status_code == 200, ok.text


def test_api_key_unknown_route_models_and_health(server):
    assert _post(server, "/v1/completions", OK, key="wrong").status_code == 401
    assert _post(server, "/v1/completions", OK, key=None).status_code == 401
    assert httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
    models = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def _os_threads() -> int:
    import os

    return len(os.listdir("/proc/self/task"))


def test_64_concurrent_clients_are_all_answered_on_one_decoder_thread(server):
    """Plain answers and streams alike decode on the one decoder thread: after 64 concurrent clients the
    process has no more threads than after one request (a thread pool would keep its threads, and each
    thread that ran the numba kernels its own OpenMP team and allocator arena)."""
    assert _post(server, "/v1/completions", OK).status_code == 200
    before = _os_threads()
    bodies = [OK, {**OK, "stream": True}] * 32
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(lambda b: _post(server, "/v1/completions", b).status_code, bodies))
    assert codes == [200] * 64
    deadline = time.time() + 10  # the clients' own threads end after the pool closes
    while _os_threads() > before and time.time() < deadline:
        time.sleep(0.05)
    assert _os_threads() <= before
    assert [t.name for t in threading.enumerate()].count("ptq161-decoder_0") == 1


def test_the_decoder_serves_requests_in_arrival_order(served):
    import asyncio

    order: list[int] = []
    gate = threading.Event()

    async def arrive() -> None:
        first = asyncio.ensure_future(served.run(gate.wait))  # holds the decoder until every job is queued
        jobs = [asyncio.ensure_future(served.run(order.append, i)) for i in range(8)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *jobs)

    asyncio.run(arrive())
    assert order == list(range(8))


def test_a_client_dropping_mid_stream_frees_the_decoder(server, served):
    body = json.dumps({**OK, "max_tokens": 500, "stream": True}).encode()
    with httpx.stream("POST", server.url + "/v1/completions", content=body,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
                      timeout=30) as r:  # fmt: skip
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    cancelled = served.cancelled
    assert _post(server, "/v1/completions", OK).status_code == 200
    assert served.cancelled == cancelled + 1  # its generation stopped early, the decoder went to the next one


def test_a_model_that_fails_to_load_gives_503():
    def fail():
        raise RuntimeError("no such file")

    served = ServedModel("broken")
    served.load(fail)
    s = _Server(served)
    try:
        assert httpx.get(s.url + "/health").status_code == 503
        r = httpx.post(s.url + "/v1/completions", json={**OK, "model": "broken"})
        assert r.status_code == 503 and "no such file" in r.json()["error"]["message"]
    finally:
        s.stop()


def _generate(capsys, *args: str) -> tuple[int, str, str]:
    from ptq161.cli import main

    capsys.readouterr()
    rc = main(["generate", *args, "--no-verify"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_generate_refuses_beyond_the_context_before_any_work(packed, capsys):
    rc, _, err = _generate(capsys, packed, "--prompt", "Hi", "--max-new-tokens", "8300")
    assert rc == 2 and "exceeds the model's context of 512 tokens" in err and len(err.strip().splitlines()) == 1


def test_generate_samples_repeatably_with_a_seed_and_greedy_matches_the_server(packed, capsys, client):
    args = [packed, "--prompt", "ab", "--max-new-tokens", "10", "--temperature", "1", "--seed", "4"]
    a, b = _generate(capsys, *args)[1], _generate(capsys, *args)[1]
    assert a == b and a.startswith("ab")
    rc, greedy, err = _generate(capsys, packed, "--prompt", "ab", "--max-new-tokens", "10")
    want = client.completions.create(model="tiny", prompt="ab", max_tokens=10, temperature=0).choices[0].text
    assert rc == 0 and greedy == "ab" + want + "\n" and "through the fused engine" in err


def test_chat_flag_and_the_chat_command_use_the_template(packed, capsys, client, monkeypatch):
    import io

    from ptq161.cli import main

    want = _chat(client, max_tokens=6, temperature=0).choices[0].message.content
    rc, out, _ = _generate(capsys, packed, "--prompt", "hi", "--max-new-tokens", "6", "--chat")
    assert rc == 0 and out == want + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n\n"))
    capsys.readouterr()
    assert main(["chat", packed, "--max-new-tokens", "6", "--no-verify"]) == 0
    assert capsys.readouterr().out == want + "\n"


def test_lm_eval_local_completions_scores_like_ptq161_eval(packed, shared_data, tmp_path):
    """lm-evaluation-harness's OpenAI-completions client against the server: the same accuracy as
    `ptq161 eval` (lm-eval's HFLM on the model in memory) on the same items."""
    import shutil

    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from ptq161.eval.zeroshot import evaluate_zeroshot

    d = tmp_path / "eos"
    shutil.copytree(packed, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "!"  # lm-eval scores continuations after a prefix token
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    model, tok = load(str(d), verify=False)
    served = ServedModel("tiny")
    served.load(lambda: (model, tok))
    s = _Server(served)
    try:
        client = LocalCompletionsAPI(
            base_url=s.url + "/v1/completions", model="tiny", tokenizer=str(d), tokenizer_backend="huggingface",
            max_length=512, max_retries=1, num_concurrent=1,
        )  # fmt: skip
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM

        pairs = [("!The cat sat on", " the mat"), ("!Water boils at", " a hundred degrees"), ("!ab", "c")]
        reqs = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
        remote = client.loglikelihood(reqs)
        local = HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu").loglikelihood(reqs)
        for (a, greedy_a), (b, greedy_b) in zip(remote, local, strict=True):
            assert a == pytest.approx(b, rel=1e-4) and greedy_a == greedy_b
        kw = dict(limit=6, data_dir=shared_data)
        via_server = evaluate_zeroshot(model, tok, ["piqa", "arc_easy"], lm=client, **kw)
        in_memory = evaluate_zeroshot(model, tok, ["piqa", "arc_easy"], batch_size=1, **kw)
    finally:
        s.stop()
    for task in ("piqa", "arc_easy"):
        assert via_server.n_samples[task] == in_memory.n_samples[task] == 6
        for metric in ("acc", "acc_norm"):
            assert via_server.tasks[task][metric] == in_memory.tasks[task][metric], (task, metric)


def test_serve_refuses_a_model_that_does_not_exist_in_one_line(capsys, tmp_path):
    from ptq161.cli import main

    assert main(["serve", str(tmp_path / "nothing"), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such model" in err[0]


def test_ignore_eos_generates_max_tokens_where_the_model_would_stop(packed, server):
    model, tok = load(packed, verify=False)
    ids = tok("ab", return_tensors="pt").input_ids
    free = Generation(model, tok, ids, 4, ignore_eos=True)
    list(free)
    model.generation_config.eos_token_id = free.tokens[0]  # the model's first greedy token now ends the text
    stopped = Generation(model, tok, ids, 4)
    list(stopped)
    assert stopped.tokens == [] and stopped.finish_reason == "stop"
    again = Generation(model, tok, ids, 4, ignore_eos=True)
    list(again)
    assert again.tokens == free.tokens and len(again.tokens) == 4 and again.finish_reason == "length"
    r = _post(server, "/v1/completions", {**OK, "ignore_eos": True})  # the request field (vLLM's name)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == OK["max_tokens"]


def test_streamed_echo_gives_the_prompt_then_the_same_text_as_unstreamed(client):
    whole = client.completions.create(model="tiny", prompt="ab", max_tokens=8, temperature=0, echo=True)
    chunks = list(client.completions.create(model="tiny", prompt="ab", max_tokens=8, temperature=0, echo=True,
                                            stream=True))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert whole.choices[0].text.startswith("ab") and text == whole.choices[0].text
    assert chunks[0].choices[0].text == "ab" and chunks[-1].usage.completion_tokens == 8


def test_stream_with_logprobs_is_refused_in_json(server):
    r = _post(server, "/v1/completions", {**OK, "stream": True, "logprobs": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "stream"


def test_lm_eval_local_chat_completions_generates_like_the_engine(packed, server, monkeypatch):
    """lm-evaluation-harness's chat-completions client (what its generative tasks use with
    ``--apply_chat_template``) against the server: each answer equals the in-process greedy
    generation of the templated messages, cut at the task's stop string."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.api_models import JsonChatStr
    from lm_eval.models.openai_completions import LocalChatCompletion

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    client = LocalChatCompletion(base_url=server.url + "/v1/chat/completions", model="tiny", max_retries=1)
    model, tok = load(packed, verify=False)
    questions = ["hi", "What is two plus two?", "ab"]
    whole = []
    for q in questions:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt")  # fmt: skip
        gen = Generation(model, tok, ids if isinstance(ids, torch.Tensor) else ids["input_ids"], 10)
        list(gen)
        whole.append(gen.text)
    stop = whole[0][4:6]
    assert stop
    until = {"until": [stop], "max_gen_toks": 10}
    chats = [JsonChatStr(json.dumps([{"role": "user", "content": q}])) for q in questions]
    reqs = [Instance("generate_until", {}, (chat, until), i) for i, chat in enumerate(chats)]
    answers = client.generate_until(reqs)
    assert answers == [w.split(stop)[0] for w in whole]
    assert answers[0] == whole[0][:4]  # the stop string did cut the first one
