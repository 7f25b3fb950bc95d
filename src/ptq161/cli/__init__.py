"""Command-line interface: one module per subcommand (``add_parser`` + ``run``) over ``ptq161.api``.

Exit codes: 0 success, 2 a one-line error about the input (model, data, options, a damaged file), 3 a
non-finite number (NaN / inf in the weights, a loss, a block output or a perplexity), 4 the system refused
a read or write (disk full, permissions), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..errors import PTQ161Error
from . import bench, chat, convert, demo, generate, info, ppl, preprocess, quantize, recipes, report, serve
from . import eval as eval_cmd
from .common import EXIT_OS, EXIT_USAGE, Parser

SUBCOMMANDS = (quantize, recipes, ppl, preprocess, convert, info, report, generate, chat, serve, eval_cmd, bench, demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``ptq161`` argument parser with all subcommands."""
    parser = Parser(
        prog="ptq161",
        description="Extremely low-bit post-training quantization (PTQ1.61) of LLaMA-family models.",
        epilog="exit codes: 0 success, 2 bad input or a damaged file (one-line error), 3 a NaN or infinite number "
        "(in the weights, a loss, a block output or a perplexity; the error names where), 4 the system refused a "
        "read or write (disk full, permissions), 130 interrupted",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ptq161`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    if getattr(args, "max_memory", None) is not None:  # a memory budget: freed large buffers go back at once
        from ..models.lazy import bound_heap_growth

        bound_heap_growth()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PTQ161Error as e:
        print(f"ptq161: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the system refused a read or write: disk full, permissions, a vanished file
        where = f": {e.filename}" if e.filename else ""
        print(f"ptq161: error: {e.strerror or e}{where} (nothing finished was written; --resume continues a run)",
              file=sys.stderr)  # fmt: skip
        return EXIT_OS
    except KeyboardInterrupt:
        print("ptq161: interrupted", file=sys.stderr)
        return 130


__all__ = ["EXIT_USAGE", "build_parser", "main"]
