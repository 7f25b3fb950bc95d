"""An OpenAI-compatible HTTP server for one model: ``ptq161 serve MODEL``.

FastAPI + uvicorn, pydantic request models. Endpoints: ``/v1/chat/completions`` and ``/v1/completions``
(streamed as server-sent events with ``"stream": true``), ``/v1/models``, ``/health``. Chat messages go
through the tokenizer's chat template. Requests are served one at a time by the one decoder (the fused
engine for packed LLaMA-layout models, else the model's forward) on one dedicated thread, in arrival order: the
numba kernels' OpenMP team and the allocator's arena are those of that thread alone, so memory does not grow with
the number of threads that ever decoded. A streaming client that disconnects stops its generation at the next
token (a watcher polls the connection), or before it starts when it was still queued.
Every error is a JSON body
``{"error": {"message", "type", "code"}}`` with its status: 400 bad request (malformed JSON, unknown
field, out-of-range value, prompt + max_tokens beyond the context), 401 wrong API key, 404 unknown
model or route, 413 body too large, 503 model not loaded (still loading, or its load failed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import PTQ161Error
from .runtime.generate import Generation, context_length, decode_path, pick_engine
from .runtime.sampling import Sampling

MAX_BODY = 1 << 20  # bytes of a request body
POLL_SECONDS = 1 / 20  # how often a streaming request checks that its client is still there


class ApiError(Exception):
    """An error answered as OpenAI's JSON error body with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


class _Sampled(BaseModel):
    """Fields shared by both completion endpoints (OpenAI's names and defaults; top_k is an extension)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None
    ignore_eos: bool = False  # an extension (as vLLM's): generate max_tokens whatever the model ends with


class CompletionRequest(_Sampled):
    """``POST /v1/completions``. ``prompt``: text, token ids, or a batch of either (scored one by one);
    ``echo`` and ``logprobs`` (top-k alternatives per token) as OpenAI's legacy API, which
    lm-evaluation-harness's ``local-completions`` uses to score continuations."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)


def token_logprobs(model: Any, ids: torch.Tensor, top: int) -> tuple[list[float | None], list[dict[int, float] | None]]:
    """Log-probability of every token of ids [1, T] given the ones before (None for the first) and the
    ``top`` most likely alternatives at each position ({token id: logprob}; None for the first), from one
    forward of the model over the whole sequence."""
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1)
    chosen = lp.gather(1, ids[0, 1:, None])[:, 0].tolist()
    alts: list[dict[int, float] | None] = [None]
    if top:
        vals, idx = lp.topk(top, dim=-1)
        alts += [dict(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(idx, vals, strict=True)]
    else:
        alts += [{} for _ in chosen]
    return [None, *chosen], alts


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampled):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


@dataclass
class ServedModel:
    """The model behind the server; ``error`` is set when its load failed, ``model`` None while loading."""

    name: str
    context: int = 0
    model: Any = None
    tokenizer: Any = None
    engine: Any = None
    path: str = ""
    error: str | None = None
    cancelled: int = 0  # streamed generations stopped because their client went away
    decoder: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ptq161-decoder")
    )  # the one thread every generation runs on, its queue in arrival order
    created: int = field(default_factory=lambda: int(time.time()))

    async def run(self, job: Any, *args: Any) -> Any:
        """``job(*args)`` on the decoder thread, after the jobs queued before it."""
        return await asyncio.wrap_future(self.decoder.submit(job, *args))

    def load(self, loader: Any, engine_mode: str = "auto", context: int | None = None) -> None:
        """Load with ``loader() -> (model, tokenizer)`` and build the decoder; a failure is kept in ``error``."""
        try:
            model, tokenizer = loader()
            ctx = min(context or context_length(model), context_length(model))
            self.engine = pick_engine(model, engine_mode, ctx)
            self.path = decode_path(model, engine_mode, ctx)
            self.model, self.tokenizer, self.context = model, tokenizer, ctx
        except Exception as e:  # any load failure becomes the 503 answer's message
            self.error = (str(e).splitlines() or [type(e).__name__])[0]

    def ready(self) -> None:
        """Raise the 503 ``ApiError`` when the model cannot serve (yet)."""
        if self.error is not None:
            raise ApiError(503, f"model {self.name} failed to load: {self.error}", "server_error", "model_not_loaded")
        if self.model is None:
            raise ApiError(503, f"model {self.name} is still loading", "server_error", "model_loading")


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": e.message, "type": e.kind, "param": None, "code": e.code}}, status_code=e.status
    )


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "stop: up to 4 non-empty strings", code="invalid_stop")
    return stops


def create_app(served: ServedModel, api_key: str | None = None) -> FastAPI:
    """The FastAPI application serving ``served`` (``api_key``: required as ``Authorization: Bearer KEY``)."""
    app = FastAPI(title="ptq161", docs_url=None, redoc_url=None)
    workers: set[asyncio.Task] = set()  # streaming generations' worker threads still running

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, e: ApiError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(ApiError(400, f"{where + ': ' if where else ''}{first.get('msg')}", code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(ApiError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None))

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        if api_key is not None and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return _error(ApiError(401, "invalid or missing API key", "authentication_error", "invalid_api_key"))
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return _error(ApiError(413, f"request body larger than {MAX_BODY} bytes", code="body_too_large"))
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_BODY:
                return _error(ApiError(413, f"request body larger than {MAX_BODY} bytes", code="body_too_large"))
            try:
                json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                return _error(ApiError(400, f"the body is not UTF-8 JSON: {e}", code="invalid_json"))
        return await call_next(request)

    @app.get("/health")
    async def health() -> JSONResponse:
        if served.error is not None or served.model is None:
            status = "error" if served.error else "loading"
            return JSONResponse({"status": status, "error": served.error}, status_code=503)
        return JSONResponse({"status": "ok", "model": served.name, "decode_path": served.path})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": served.name, "object": "model", "created": served.created, "owned_by": "ptq161"}
        return {"object": "list", "data": [card]}

    def check_model(name: str) -> None:
        if name != served.name:
            raise ApiError(404, f"model '{name}' not found; this server serves '{served.name}'", code="model_not_found")
        served.ready()

    def generation(ids: torch.Tensor, req: _Sampled, max_tokens: int | None) -> Generation:
        sampling = Sampling(req.temperature, req.top_k, req.top_p, req.seed)
        room = served.context - ids.shape[1]
        if room < 1:
            raise ApiError(
                400,
                f"the prompt has {ids.shape[1]} tokens; the context is {served.context}",
                code="context_length_exceeded",
            )
        new = max_tokens if max_tokens is not None else room
        try:
            return Generation(
                served.model, served.tokenizer, ids, new, sampling, _stops(req.stop), served.engine, req.ignore_eos
            )
        except PTQ161Error as e:
            raise ApiError(400, str(e), code="context_length_exceeded") from None

    def respond(req: _Sampled, gen: Generation, kind: str, echo: str = "") -> Any:
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        obj = "chat.completion" if kind == "chat" else "text_completion"
        created = int(time.time())
        prompt_tokens = gen.input_ids.shape[1]

        def usage() -> dict[str, int]:
            n = len(gen.tokens)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}

        def choice(text: str | None, finish: str | None, delta: bool) -> dict[str, Any]:
            if kind == "chat":
                body = {"role": "assistant", "content": text} if not delta else ({"content": text} if text else {})
                return {"index": 0, ("delta" if delta else "message"): body, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        if not req.stream:

            def run() -> dict[str, Any]:
                for _ in gen:
                    pass
                return {"id": rid, "object": obj, "created": created, "model": served.name,
                        "choices": [choice(echo + gen.text, gen.finish_reason, False)], "usage": usage()}  # fmt: skip

            return run

        chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def events() -> Iterator[str]:
            def event(payload: dict[str, Any]) -> str:
                return f"data: {json.dumps(payload)}\n\n"

            head = {"id": rid, "object": chunk_obj, "created": created, "model": served.name}
            if kind == "chat":
                role = {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}
                yield event({**head, "choices": [role]})
            if echo:  # the prompt's text comes first, as OpenAI's legacy API streams it
                yield event({**head, "choices": [choice(echo, None, True)]})
            for delta in gen:
                yield event({**head, "choices": [choice(delta, None, True)]})
            yield event({**head, "choices": [choice(None, gen.finish_reason, True)], "usage": usage()})
            yield "data: [DONE]\n\n"

        return events

    async def answer(request: Request, req: _Sampled, make: Any) -> Any:
        out = make()
        if not req.stream:
            return JSONResponse(await served.run(out))

        async def stream() -> Any:
            """Events from a worker thread that holds the decoder; a watcher stops it when the client goes."""
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            stop = threading.Event()

            def put(item: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down)
                    loop.call_soon_threadsafe(queue.put_nowait, item)

            def work() -> None:
                try:
                    if stop.is_set():  # the client left while queued: nothing to decode
                        served.cancelled += 1
                        return
                    for chunk in out():
                        if stop.is_set():
                            served.cancelled += 1
                            break
                        put(chunk)
                finally:
                    put(None)

            async def watch() -> None:
                while not stop.is_set():
                    if await request.is_disconnected():
                        stop.set()
                    await asyncio.sleep(POLL_SECONDS)

            worker = asyncio.ensure_future(served.run(work))  # queued with plain answers on the decoder thread
            workers.add(worker)  # referenced until the thread ends, after the response may be gone
            worker.add_done_callback(workers.discard)
            watcher = asyncio.create_task(watch())
            try:
                while (chunk := await queue.get()) is not None:
                    yield chunk
            finally:
                stop.set()
                watcher.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream")

    def prompt_ids(prompt: str | list[int]) -> torch.Tensor:
        if isinstance(prompt, str):
            ids = served.tokenizer(prompt, return_tensors="pt").input_ids
        else:
            vocab = served.model.config.vocab_size
            if any(not 0 <= t < vocab for t in prompt):
                raise ApiError(400, f"token ids must be in [0, {vocab})", code="invalid_token")
            ids = torch.tensor([prompt], dtype=torch.long)
        if ids.shape[1] == 0:
            raise ApiError(400, "the prompt is empty", code="empty_prompt")
        return ids

    def scored(req: CompletionRequest, prompts: list[str | list[int]]) -> dict[str, Any]:
        """Completions with ``echo`` / ``logprobs`` for a batch of prompts, one after the other."""
        tok = served.tokenizer
        choices, used, made = [], 0, 0
        for i, prompt in enumerate(prompts):
            ids = prompt_ids(prompt)
            gen = generation(ids, req, req.max_tokens)
            for _ in gen:
                pass
            new = gen.tokens + ([gen.eos_token] if gen.eos_token is not None else [])  # OpenAI lists the eos too
            seq = torch.cat([ids, torch.tensor([new], dtype=torch.long)], 1) if new else ids
            lps, alts = token_logprobs(served.model, seq, req.logprobs or 0)
            start = 0 if req.echo else ids.shape[1]
            toks = seq[0].tolist()[start:]
            names = [tok.decode([t]) for t in toks]
            logprobs = None
            if req.logprobs is not None:
                logprobs = {
                    "tokens": names,
                    "token_logprobs": lps[start:],
                    "top_logprobs": [
                        None if a is None else {tok.decode([t]): v for t, v in a.items()} for a in alts[start:]
                    ],
                    "text_offset": [sum(len(n) for n in names[:k]) for k in range(len(names))],
                }
            text = (tok.decode(ids[0]) if req.echo else "") + gen.text
            choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": gen.finish_reason})
            used, made = used + ids.shape[1], made + len(gen.tokens)
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": served.name, "choices": choices,
            "usage": {"prompt_tokens": used, "completion_tokens": made, "total_tokens": used + made},
        }  # fmt: skip

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        check_model(req.model)
        p = req.prompt
        batch = isinstance(p, list) and bool(p) and not isinstance(p[0], int)
        prompts: list[str | list[int]] = list(p) if batch else [p]  # type: ignore[list-item]
        if batch or req.logprobs is not None or (req.echo and not req.stream):
            if req.stream:
                raise ApiError(400, "stream with logprobs or a batch of prompts is not supported", code="stream")
            return JSONResponse(await served.run(scored, req, prompts))  # on the decoder thread, in turn
        ids = prompt_ids(prompts[0])
        echo = served.tokenizer.decode(ids[0]) if req.echo else ""  # streamed echo: the same text as unstreamed
        return await answer(request, req, lambda: respond(req, generation(ids, req, req.max_tokens), "text", echo))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request) -> Any:
        check_model(req.model)
        if getattr(served.tokenizer, "chat_template", None) is None:
            raise ApiError(
                400, f"model {served.name} has no chat template: use /v1/completions", code="no_chat_template"
            )
        messages = [m.model_dump() for m in req.messages]
        ids = served.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        limit = req.max_completion_tokens or req.max_tokens
        return await answer(request, req, lambda: respond(req, generation(ids, req, limit), "chat"))

    return app


def serve(
    spec: str,
    loader: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    engine: str = "auto",
    context: int | None = None,
    name: str | None = None,
) -> None:
    """Load the model with ``loader() -> (model, tokenizer)`` in the background and serve it until
    interrupted (``/health`` says 503 while loading or after a failed load)."""
    import uvicorn

    served = ServedModel(name or spec)
    threading.Thread(target=served.load, args=(loader, engine, context), daemon=True).start()
    uvicorn.run(create_app(served, api_key), host=host, port=port, log_level="warning")


__all__ = ["ApiError", "ChatRequest", "CompletionRequest", "ServedModel", "create_app", "serve"]
