"""accelerate placement of the block stage: a model over the budget spread over the devices, the RAM and the disk,
handed to the driver one decoder layer at a time, with the numbers of the whole model in memory."""

import logging

import pytest
import torch
from tests.helpers import quantize_with, save_model_dir, tiny_llama

import ptq161
from ptq161 import CalibConfig
from ptq161.errors import PTQ161Error
from ptq161.methods.ptq161 import PTQ161Config
from ptq161.models.placed import OFFLOAD_DIR, choose_placement
from ptq161.pipeline.e2e import E2EConfig
from ptq161.pipeline.output_dir import read_meta

# RAM budget for a 4-layer tiny LLaMA (embedding 66.5 kB, a layer 148 kB, fp32): accelerate gets half of it,
# which holds the embedding and one layer beside the largest layer it reserves; the rest goes to disk
OFFLOADING_BUDGET = 800_000
MB = 2**20


def test_the_placement_rule():
    assert choose_placement("auto", "cpu", 100 * MB, 400 * MB) == "whole"
    assert choose_placement("auto", "cpu", 201 * MB, 400 * MB) == "onload"  # weights over half the RAM budget
    assert choose_placement("auto", "cpu", None, 1) == "whole"  # unknown size (a hub id): loaded whole
    assert choose_placement("auto", "cuda", 100 * MB, 400 * MB, gpu_free=200 * MB) == "whole"
    assert choose_placement("auto", "cuda", 101 * MB, 400 * MB, gpu_free=200 * MB) == "accelerate"  # GPU too small
    assert choose_placement("auto", "cuda", 201 * MB, 400 * MB, gpu_free=10**12) == "accelerate"  # RAM too small
    assert choose_placement("onload", "cuda", 1, 10**12, gpu_free=10**12) == "onload"  # asked for: as given
    with pytest.raises(PTQ161Error, match="unknown placement 'gpu'"):
        choose_placement("gpu", "cpu", 1, 1)


@pytest.fixture
def model_dir(tmp_path):
    return save_model_dir(tiny_llama(num_hidden_layers=4), tmp_path / "llama4")


def test_accelerate_offloading_gives_the_numbers_of_the_whole_model(model_dir, text_file, tmp_path, caplog):
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=4, seqlen=64)
    kw = dict(method_config=PTQ161Config(epochs=1), calib=calib, progress=False)
    whole = quantize_with(str(model_dir), output=tmp_path / "whole", **kw)
    with caplog.at_level(logging.INFO, logger="ptq161"):
        placed = quantize_with(
            str(model_dir), output=tmp_path / "placed", max_memory=OFFLOADING_BUDGET, placement="accelerate", **kw
        )
    meta = read_meta(tmp_path / "placed")
    assert meta["placement"] == "accelerate" and read_meta(tmp_path / "whole")["placement"] == "whole"
    assert meta["device_map"].get("disk", 0) >= 1 and meta["device_map"].get("cpu", 0) >= 1, meta["device_map"]
    assert "accelerate placement of" in caplog.text and "'disk'" in caplog.text  # the choice is logged
    assert not (tmp_path / "placed" / OFFLOAD_DIR).exists()  # the offload folder is gone
    assert whole.parts.keys() == placed.parts.keys()
    for name, parts in whole.parts.items():
        for k, v in parts.items():
            assert torch.equal(placed.parts[name][k], v), (name, k)
    loaded, _ = ptq161.load(tmp_path / "placed")
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, whole.model(ids).logits)


def test_accelerate_placement_refuses_what_needs_the_whole_model(model_dir, text_file, tmp_path):
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=64)
    # forced on a model that fits: the message names the flag, not a budget
    with pytest.raises(PTQ161Error, match=r"^--placement accelerate \(accelerate placement\), and the end-to-end"):
        quantize_with(
            str(model_dir), calib=calib, output=tmp_path / "o", placement="accelerate", e2e=E2EConfig(steps=2)
        )
    assert not (tmp_path / "o" / OFFLOAD_DIR).exists()


def test_cli_places_with_accelerate(model_dir, text_file, tmp_path, caplog):
    from ptq161.cli import main

    out = tmp_path / "cli"
    args = ["quantize", str(model_dir), "--output", str(out), "--calib-nsamples", "2", "--epochs", "1"]
    args += ["--calib-dataset", f"text:{text_file}", "--calib-seqlen", "64", "--placement", "accelerate"]
    assert main([*args, "--max-memory", str(OFFLOADING_BUDGET)]) == 0  # the cpu recipe's e2e stage: dropped
    assert "accelerate placement, without the recipe's end-to-end stage" in caplog.text
    meta = read_meta(out)
    assert meta["placement"] == "accelerate" and "e2e" not in meta and "disk" in meta["device_map"]
