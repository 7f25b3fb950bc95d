"""``ptq161 serve``: an OpenAI-compatible HTTP server for one model (see ``ptq161.serve``)."""

from __future__ import annotations

import argparse

from ..api import load
from .common import add_device, add_load_options, load_options, positive_int
from .generate import add_engine_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)",
        description="Serve one model over HTTP: /v1/chat/completions and /v1/completions (streamed with "
        '"stream": true), /v1/models, /health. Requests are answered one at a time by one decoder.',
    )
    p.add_argument("model", help="a ptq161 output directory, smollm2-135m, a local model directory or a hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1/ requests")
    p.add_argument("--name", default=None, help="the model's id in the API (default: MODEL as given)")
    p.add_argument(
        "--context", type=positive_int, default=None, help="tokens per request, prompt included (default: the model's)"
    )
    add_engine_option(p)
    add_device(p)
    add_load_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (a model spec that names nothing loadable is a one-line error first)."""
    from ..models.loading import resolve_model_path
    from ..serve import serve

    resolve_model_path(args.model)  # a missing directory or unknown name: exit 2 before the server starts

    print(f"serving {args.model} on http://{args.host}:{args.port}/v1 (loading; /health says when ready)")
    serve(
        args.model, lambda: load(args.model, device=args.device, **load_options(args)), host=args.host,
        port=args.port, api_key=args.api_key, engine=args.engine, context=args.context, name=args.name,
    )  # fmt: skip
    return 0
