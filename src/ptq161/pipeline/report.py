"""``ptq161 report``: a Markdown / HTML report of one or more quantized outputs.

For each output: its settings, stored bits per weight by layer kind, per-block loss curves
(from the block logs in ``ptq161.json``) and, for PTQ1.61, the map of salient channels. For
several outputs with perplexities: a perplexity-vs-true-bits plot (log scale), one point per
output, with the Pareto front. Figures are PNG files beside the Markdown
(``NAME_files/``); the HTML embeds them.
"""

from __future__ import annotations

import base64
import html
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import PTQ161Error
from ..eval.plots import loss_curves_png, pareto_png, salient_map_png
from ..eval.report import markdown_table
from ..utils import atomic_write_text
from .output_dir import META, head_format, read_meta, read_parts

# a report is a list of items: ("h1"|"h2"|"p", text), ("table", headers, rows), ("img", png path, alt text)
Item = tuple


@dataclass
class OutputInfo:
    """One output directory as the report sees it; ``ppl``: {dataset: perplexity} when evaluated."""

    path: Path
    meta: dict[str, Any]
    label: str
    ppl: dict[str, float] = field(default_factory=dict)


def read_output(path: str | Path) -> OutputInfo:
    """The metadata of output directory ``path`` (a one-line error when it is not one)."""
    p = Path(path)
    meta = read_meta(p) if p.is_dir() else None
    if meta is None:
        raise PTQ161Error(f"'{path}' is not a ptq161 output directory (no {META})")
    return OutputInfo(p, meta, p.name)


def layer_kind(path: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``q_proj``."""
    return path.rsplit(".", 1)[-1]


def bits_by_kind(layers: dict[str, dict[str, Any]]) -> dict[str, tuple[int, float, float]]:
    """{kind: (weights, paper bits/weight, stored bits/weight)} weighted by each layer's weight count."""
    acc: dict[str, list[float]] = {}
    for name, b in layers.items():
        a = acc.setdefault(layer_kind(name), [0, 0.0, 0.0])
        a[0] += b["numel"]
        a[1] += b["paper_bits_per_weight"] * b["numel"]
        a[2] += b["stored_bits_per_weight"] * b["numel"]
    return {k: (int(n), p / n, s / n) for k, (n, p, s) in acc.items()}


def salient_maps(info: OutputInfo) -> dict[str, torch.Tensor]:
    """{kind: bool [blocks, n]} of the salient input channels of a PTQ1.61 output (empty for other methods)."""
    if info.meta.get("method") != "ptq161":
        return {}
    parts = read_parts(info.path)
    rows: dict[str, list[torch.Tensor]] = {}
    for name in sorted(parts, key=_block_order):
        if "mask" in parts[name]:
            rows.setdefault(layer_kind(name), []).append(parts[name]["mask"].bool())
    return {k: torch.stack(v) for k, v in rows.items() if len({t.numel() for t in v}) == 1}


def _block_order(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else 0 for t in name.split("."))


def _settings_rows(meta: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("method", meta.get("method")), ("model", meta.get("model")), ("weights", meta.get("weights_format"))]
    rows += [(f"calibration {k}", v) for k, v in (meta.get("calibration") or {}).items()]
    rows += [(k, v) for k, v in (meta.get("config") or {}).items()]
    if meta.get("weights_format") == "packed":
        rows.append(("embedding and lm_head", head_format(meta)))
    for key in ("dtype", "device", "block_onloading", "seconds", "peak_rss_mb"):
        if key in meta:
            v = meta[key]
            rows.append((key, f"{v:.1f}" if isinstance(v, float) else v))
    if meta.get("e2e"):
        rows += [(f"end-to-end {k}", v) for k, v in meta["e2e"].items() if not isinstance(v, list | dict)]
    return [(k, str(v)) for k, v in rows]


def report_items(outputs: Sequence[OutputInfo], figures: Path, title: str) -> list[Item]:
    """The report's content; figures are written into ``figures``."""
    items: list[Item] = [("h1", title)]
    if len(outputs) > 1 or any(o.ppl for o in outputs):
        head = ["output", "method", "true bits/weight (stored)", *sorted({d for o in outputs for d in o.ppl})]
        rows = []
        for o in outputs:
            b = o.meta["bits"]
            ppls = [round(o.ppl[d], 2) if d in o.ppl else "-" for d in head[3:]]
            rows.append((o.label, o.meta["method"], round(b["stored_bits_per_weight"], 3), *ppls))
        items += [("h2", "Overview"), ("table", head, rows)]
        points = [
            (o.label, o.meta["bits"]["stored_bits_per_weight"], o.ppl.get("wikitext2", next(iter(o.ppl.values()))))
            for o in outputs
            if o.ppl
        ]
        if len(points) > 1:
            name = "wikitext2" if all("wikitext2" in o.ppl for o in outputs if o.ppl) else "first dataset"
            png = figures / "pareto.png"
            pareto_png(points, png, "perplexity against true bits per weight", f"{name} perplexity (log scale)")
            items.append(("img", png, "perplexity against true bits per weight, Pareto front in grey"))
    for i, o in enumerate(outputs):
        items += [("h2", f"{o.label}: {o.meta['method']}"), ("p", f"`{o.path}`")]
        items.append(("table", ["setting", "value"], _settings_rows(o.meta)))
        by_kind = bits_by_kind(o.meta["bits"]["layers"])
        rows = [(k, n, round(p, 4), round(s, 4)) for k, (n, p, s) in by_kind.items()]
        b = o.meta["bits"]
        rows.append(("all decoder linears", b["numel"], round(b["paper_bits_per_weight"], 4),
                     round(b["stored_bits_per_weight"], 4)))  # fmt: skip
        items.append(("table", ["layer kind", "weights", "bits/w (paper's count)", "bits/w (stored)"], rows))
        png = figures / f"{i:02d}_loss.png"
        if loss_curves_png(o.meta.get("block_logs") or [], png, f"{o.label}: block by block"):
            items.append(("img", png, "per-block training loss and output error"))
        maps = salient_maps(o)
        if maps:
            png = figures / f"{i:02d}_salient.png"
            salient_map_png(maps, png, f"{o.label}: salient (4-bit) input channels")
            items.append(("img", png, "salient channels by block"))
    return items


def render_markdown(items: Sequence[Item], base: Path) -> str:
    """Markdown of ``items``; images are linked relative to ``base`` (the Markdown file's directory)."""
    out = []
    for it in items:
        if it[0] == "h1":
            out.append(f"# {it[1]}")
        elif it[0] == "h2":
            out.append(f"## {it[1]}")
        elif it[0] == "p":
            out.append(it[1])
        elif it[0] == "table":
            out.append(markdown_table(it[1], it[2]))
        elif it[0] == "img":
            out.append(f"![{it[2]}]({Path(it[1]).relative_to(base).as_posix()})")
    return "\n\n".join(out) + "\n"


def render_html(items: Sequence[Item]) -> str:
    """A self-contained HTML page of ``items`` (figures embedded as base64 PNG)."""
    body = []
    for it in items:
        if it[0] in ("h1", "h2"):
            body.append(f"<{it[0]}>{html.escape(it[1])}</{it[0]}>")
        elif it[0] == "p":
            body.append(f"<p>{html.escape(it[1].strip('`'))}</p>")
        elif it[0] == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in it[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in it[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif it[0] == "img":
            data = base64.b64encode(Path(it[1]).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(it[2])}" src="data:image/png;base64,{data}">')
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}img{max-width:100%}"
    )
    head = f"<head><meta charset='utf-8'><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(body)}</body></html>\n"


def write_report(
    outputs: Sequence[OutputInfo], output: str | Path, html_too: bool = False, title: str = ""
) -> list[Path]:
    """Write ``output`` (Markdown), its figures in ``STEM_files/`` and with ``html_too`` ``STEM.html``; returns
    the files written. Figures are made in a temporary directory first, so a failure leaves nothing behind."""
    md = Path(output)
    if md.suffix != ".md":
        raise PTQ161Error(f"the report is written as Markdown: give a .md path, not '{output}'")
    figures = md.with_name(md.stem + "_files")
    tmp = md.with_name(f".{md.stem}_files.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        items = report_items(outputs, tmp, title or "ptq161 report")
        page = render_html(items) if html_too else None
        items = [(it[0], figures / Path(it[1]).name, it[2]) if it[0] == "img" else it for it in items]
        shutil.rmtree(figures, ignore_errors=True)
        tmp.rename(figures)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(md, render_markdown(items, md.parent))
    written = [md, *sorted(figures.iterdir())]
    if page is not None:
        atomic_write_text(md.with_suffix(".html"), page)
        written.append(md.with_suffix(".html"))
    return written
