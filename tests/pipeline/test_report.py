import base64

import pytest
from tests.helpers import quantize_tiny, quantize_with

from ptq161 import CalibConfig
from ptq161.cli import main
from ptq161.errors import PTQ161Error
from ptq161.eval.plots import pareto_front
from ptq161.pipeline.report import bits_by_kind, read_output, salient_maps, write_report


def test_pareto_front_keeps_exactly_the_undominated_points():
    pts = [("a", 1.6, 150.0), ("b", 2.1, 400.0), ("c", 3.1, 50.0), ("d", 3.1, 60.0), ("e", 4.0, 30.0), ("f", 1.6, 200)]
    assert [p[0] for p in pareto_front(pts)] == ["a", "c", "e"]


def test_bits_by_kind_weights_each_layer_by_its_size():
    layers = {
        "model.layers.0.mlp.up_proj": {"numel": 300, "paper_bits_per_weight": 1.5, "stored_bits_per_weight": 2.0},
        "model.layers.1.mlp.up_proj": {"numel": 100, "paper_bits_per_weight": 2.5, "stored_bits_per_weight": 4.0},
        "model.layers.0.self_attn.q_proj": {"numel": 50, "paper_bits_per_weight": 1.0, "stored_bits_per_weight": 1.0},
    }
    got = bits_by_kind(layers)
    assert got["up_proj"] == (400, 1.75, 2.5) and got["q_proj"] == (50, 1.0, 1.0)


@pytest.fixture
def two_outputs(tiny_model_dir, text_file, tmp_path):
    ptq = tmp_path / "ptq161"
    quantize_tiny(tiny_model_dir, text_file, ptq, epochs=2, nsamples=2)
    rtn = tmp_path / "rtn"
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=64)
    quantize_with(str(tiny_model_dir), "rtn", calib=calib, output=rtn, progress=False)
    return ptq, rtn


def test_report_of_two_outputs_has_tables_figures_and_an_embedded_html(two_outputs, tmp_path):
    ptq, rtn = two_outputs
    outs = [read_output(ptq), read_output(rtn)]
    outs[0].ppl, outs[1].ppl = {"wikitext2": 150.0}, {"wikitext2": 33.0}
    maps = salient_maps(outs[0])
    assert set(maps) >= {"q_proj", "down_proj"} and maps["q_proj"].shape[0] == 2  # 2 blocks
    assert maps["q_proj"].float().mean().item() == pytest.approx(0.2, abs=0.02)
    assert salient_maps(outs[1]) == {}
    md = tmp_path / "rep" / "report.md"
    written = write_report(outs, md, html_too=True, title="tiny")
    names = sorted(p.name for p in written)
    assert names == ["00_loss.png", "00_salient.png", "01_loss.png", "pareto.png", "report.html", "report.md"]
    text = md.read_text()
    assert "| ptq161 | ptq161 |" in text and "![perplexity against true bits" in text
    assert "report_files/pareto.png" in text and "| all decoder linears |" in text
    page = (tmp_path / "rep" / "report.html").read_text()
    png = (tmp_path / "rep" / "report_files" / "pareto.png").read_bytes()
    assert base64.b64encode(png).decode() in page
    assert not list((tmp_path / "rep").glob(".*"))  # no temporary leftovers


def test_report_cli_errors_are_one_line(two_outputs, tmp_path, capsys):
    ptq, _ = two_outputs
    assert main(["report", str(ptq), "-o", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r_files" / "00_loss.png").is_file()
    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.md")]) == 2
    assert main(["report", str(ptq), "-o", str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("ptq161: error:") for line in err)
    with pytest.raises(PTQ161Error, match="not a ptq161 output"):
        read_output(tmp_path)


def test_report_ppl_onloads_over_the_budget_with_the_same_numbers(two_outputs, text_file, tmp_path, capsys):
    ptq, rtn = two_outputs
    base = ["report", str(ptq), str(rtn), "--ppl", "--datasets", f"text:{text_file}", "--seqlen", "64"]
    assert main([*base, "-o", str(tmp_path / "whole.md")]) == 0
    assert "block by block" not in capsys.readouterr().out
    assert main([*base, "-o", str(tmp_path / "onloaded.md"), "--max-memory", "1KB"]) == 0
    assert capsys.readouterr().out.count("block by block") == 2
    rows = [[line for line in (tmp_path / f"{n}.md").read_text().splitlines() if line.startswith("| ptq161 |")]
            for n in ("whole", "onloaded")]  # fmt: skip
    assert rows[0] and rows[0] == rows[1]
