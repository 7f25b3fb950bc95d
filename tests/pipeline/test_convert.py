import torch
from tests.helpers import quantize_tiny

import ptq161
from ptq161.nn import Int8Embedding, Int8Linear, PackedPTQ161Linear
from ptq161.pipeline.convert import dequantize_model_in_place


def test_int8_head_output_loads_and_dequantizes_to_the_same_logits(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "int8"
    res = quantize_tiny(tiny_model_dir, text_file, out, epochs=1, nsamples=2, int8_head=True)
    model, _ = ptq161.load(out)
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.model.embed_tokens, Int8Embedding)
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, res.model(ids).logits)
        packed_logits = model(ids).logits
    # dequantized for fast scoring: plain modules, the same logits
    assert dequantize_model_in_place(model) == 14 + 2
    assert not any(isinstance(m, Int8Linear | Int8Embedding | PackedPTQ161Linear) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, packed_logits, rtol=0, atol=1e-5)
