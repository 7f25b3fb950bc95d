"""A model directory's own Python code runs only with --trust-remote-code."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import save_model_dir, tiny_llama

from ptq161.cli import main


def _custom_code_model(path: Path, marker: Path) -> Path:
    """A tiny LLaMA saved as model_type "custom" whose classes live in the directory (auto_map)."""
    save_model_dir(tiny_llama(), path)
    (path / "configuration_custom.py").write_text(
        "from pathlib import Path\nfrom transformers import LlamaConfig\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom'\n"
    )
    (path / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\nfrom .configuration_custom import CustomConfig\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(
        model_type="custom",
        architectures=["CustomForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    )
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_remote_code_is_refused_without_the_flag_and_runs_with_it(tmp_path, text_file, capsys):
    marker = tmp_path / "code_ran"
    model = _custom_code_model(tmp_path / "custom", marker)
    capsys.readouterr()
    args = ["ppl", str(model), "--datasets", f"text:{text_file}", "--seqlen", "64", "--max-windows", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--trust-remote-code" in err
    assert not marker.exists()  # nothing of the directory's code ran
    assert main([*args, "--trust-remote-code"]) == 0
    assert marker.read_text() == "ran"
