"""``model.generate(..., custom_generate=ptq161.engine_decoding)``: transformers' generate on the fused engine."""

from __future__ import annotations

import torch
from tests.helpers import quantize_tiny, save_model_dir, tiny_llama

import ptq161
from ptq161.api import load


def test_generate_through_the_engine_equals_transformers_loop(tmp_path, text_file):
    quantize_tiny(save_model_dir(tiny_llama(), tmp_path / "src"), text_file, tmp_path / "q")
    model, _ = load(str(tmp_path / "q"), verify=False)
    ids = torch.randint(3, 250, (1, 12), generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)
    want = model.generate(ids, **kw)
    got = model.generate(ids, custom_generate=ptq161.engine_decoding, **kw)
    assert torch.equal(got, want) and got.shape == (1, 32)
    torch.manual_seed(3)
    a = model.generate(ids, custom_generate=ptq161.engine_decoding, do_sample=True, top_k=20, max_new_tokens=10,
                       pad_token_id=0)  # fmt: skip
    torch.manual_seed(3)
    b = model.generate(ids, custom_generate=ptq161.engine_decoding, do_sample=True, top_k=20, max_new_tokens=10,
                       pad_token_id=0)  # fmt: skip
    assert torch.equal(a, b) and a.shape == (1, 22)
    two = torch.cat([ids, ids])  # batch 2: transformers' own loop, the same result
    assert torch.equal(model.generate(two, custom_generate=ptq161.engine_decoding, **kw), model.generate(two, **kw))
