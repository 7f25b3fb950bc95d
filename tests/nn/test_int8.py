import torch

from ptq161.nn.int8 import Int8Embedding, Int8Linear, quantize_int8_rows


def test_int8_roundtrip_and_error_bound():
    w = torch.randn(37, 19, generator=torch.Generator().manual_seed(0))
    q, s = quantize_int8_rows(w)
    assert torch.all((q.float() * s.float()[:, None] - w).abs() <= s.float()[:, None] / 2 + 1e-6)
    lin = Int8Linear.from_weight(w)
    x = torch.randn(2, 3, 19)
    with torch.no_grad():
        assert torch.allclose(lin(x), x @ lin.dequantize().T, atol=1e-5)  # lookup path
        x2 = torch.randn(1, 20, 19)  # more tokens than the lookup path takes: row tiles
        assert torch.allclose(lin(x2), x2 @ lin.dequantize().T, atol=1e-5)
    emb = Int8Embedding.from_weight(w)
    ids = torch.tensor([[0, 5, 36]])
    assert torch.equal(emb(ids)[0], emb.dequantize()[ids[0]])


def test_int8_rows_quantized_in_tiles_equal_all_at_once():
    w = torch.randn(37, 16, generator=torch.Generator().manual_seed(3))
    q1, s1 = quantize_int8_rows(w, rows=5)
    q2, s2 = quantize_int8_rows(w, rows=1000)
    assert torch.equal(q1, q2) and torch.equal(s1, s2)
