import pytest
import torch
from tests.helpers import hessian_layer, quantize_with

from ptq161 import CalibConfig
from ptq161.errors import PTQ161Error
from ptq161.methods.omniquant import OmniQuant, OmniQuantConfig, lwc_fake_quant, lwc_stored
from ptq161.primitives.quant import rtn_grouped, rtn_stored_bits


@pytest.mark.parametrize("group_size", [0, 128, 96])
def test_without_clipping_lwc_is_exactly_grouped_min_max_rtn(group_size):
    w = hessian_layer()[0][:, :200]  # 200 columns: a ragged last group for 128 and 96
    ones = torch.full((w.shape[0], -(-200 // (group_size or 200)), 1), 30.0)  # sigmoid(30) == 1 in fp32
    assert torch.equal(lwc_stored(w, ones, ones, 3, group_size), rtn_grouped(w, 3, group_size))
    assert torch.allclose(lwc_fake_quant(w, ones, ones, 3, group_size), rtn_grouped(w, 3, group_size), atol=1e-3)


def test_clipping_parameters_get_gradients_through_the_rounding():
    w = hessian_layer()[0]
    gamma = torch.full((48, 2, 1), 4.0, requires_grad=True)
    beta = torch.full((48, 2, 1), 4.0, requires_grad=True)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    ((x @ (lwc_fake_quant(w, gamma, beta, 2, 128) - w).T) ** 2).mean().backward()
    assert gamma.grad.abs().sum() > 0 and beta.grad.abs().sum() > 0


def test_training_lowers_the_block_output_error_and_the_stored_bits_are_rtns(tiny_model_dir, text_file, tmp_path):
    def run(epochs):
        cfg = OmniQuantConfig(bits=2, group_size=32, epochs=epochs, lr=0.1)
        return quantize_with(
            str(tiny_model_dir),
            "omniquant",
            method_config=cfg,
            calib=CalibConfig(dataset=f"text:{text_file}", nsamples=4, seqlen=64),
            output=tmp_path / f"omni{epochs}",
            progress=False,
        ).meta["block_logs"]

    trained, untrained = run(4), run(0)
    # block 0 sees the same input either way: its output error is the clipping's doing
    assert trained[0]["rel_mse_out"] < 0.97 * untrained[0]["rel_mse_out"]
    assert len(trained[0]["loss_by_epoch"]) == 4
    cfg = OmniQuantConfig(bits=2, group_size=32)
    m, n = 48, 256
    assert OmniQuant(cfg).bits(m, n, {})[1] == rtn_stored_bits(m, n, 2, 32)
    with pytest.raises(PTQ161Error):
        OmniQuantConfig(bits=1)
