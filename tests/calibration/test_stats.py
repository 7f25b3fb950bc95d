"""Input Hessians: linears that read the same tensor share one accumulator, with the same H as their own."""

import pytest
import torch
from tests.helpers import tiny_llama
from torch import nn

from ptq161.calibration import HessianAccumulator, record_hessians
from ptq161.calibration.capture import capture_block_inputs, run_block
from ptq161.errors import PTQ161Error
from ptq161.models import get_adapter


def _linears(module: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


def test_q_k_v_and_gate_up_share_one_hessian_equal_to_their_own():
    model = tiny_llama()
    ad = get_adapter(model)
    ids = torch.randint(0, 260, (4, 24), generator=torch.Generator().manual_seed(0))
    x, calls = capture_block_inputs(model, ad, ids)
    block = ad.decoder_layers(model)[0]
    linears = _linears(block)
    own = {name: HessianAccumulator(lin.in_features) for name, lin in linears.items()}
    hooks = [lin.register_forward_pre_hook(lambda _m, a, acc=own[n]: acc.update(a[0])) for n, lin in linears.items()]
    with torch.no_grad(), record_hessians(linears) as acc:
        for batch in (x[:2], x[2:]):  # two forwards: the groups found in the first hold in the second
            run_block(block, batch, calls[0])
    for h in hooks:
        h.remove()
    q, k, v = (acc[f"self_attn.{p}_proj"] for p in "qkv")
    assert q is k is v and acc["mlp.gate_proj"] is acc["mlp.up_proj"]
    assert len({id(a) for a in acc.values()}) == 4  # qkv, o, gate/up, down
    for name in linears:
        assert acc[name].count == own[name].count == 4 * 24
        assert torch.equal(acc[name].get(), own[name].get()), name


class _TwoInputs(nn.Module):
    def __init__(self, same: bool = True) -> None:
        super().__init__()
        self.a, self.b, self.same = nn.Linear(8, 4), nn.Linear(8, 4), same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x if self.same else x * 2)


def test_linears_reading_different_tensors_keep_their_own_hessians():
    m = _TwoInputs(same=False)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), record_hessians(_linears(m)) as acc:
        m(x)
    assert acc["a"] is not acc["b"]
    assert torch.allclose(acc["b"].get(), 4 * acc["a"].get())


def test_an_input_modified_in_place_between_two_linears_is_not_shared():
    class InPlace(_TwoInputs):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            x.mul_(2)
            return y + self.b(x)

    m = InPlace()
    with torch.no_grad(), record_hessians(_linears(m)) as acc:
        m(torch.randn(5, 8))
    assert acc["a"] is not acc["b"]


def test_a_group_that_splits_in_a_later_forward_is_an_error_and_a_silent_linear_gets_an_empty_one():
    m = _TwoInputs(same=True)
    m.c = nn.Linear(8, 4)  # never called
    with pytest.raises(PTQ161Error, match="shared"), torch.no_grad(), record_hessians(_linears(m)) as acc:
        m(torch.randn(5, 8))
        m.same = False
        m(torch.randn(5, 8))
    assert acc["c"].count == 0 and acc["a"] is acc["b"]
