import pytest
import torch
from tests.helpers import random_packed_llama, tiny_llama
from transformers import DynamicCache

from ptq161.nn.heads import head_twin
from ptq161.runtime import DecodeEngine, greedy_generate


@pytest.mark.parametrize("permute", [False, True])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {"num_key_value_heads": 4},
        {"qwen2": True},
        {"head": "int8"},
    ],
)
def test_decode_engine_matches_the_model_forward(overrides, permute):
    """Qwen2 (q/k/v biases drawn non-zero) runs in the engine too: a dropped bias would change every logit.
    Both sign-sum kernels (byte tables, nibble tables) give the model's logits and greedy tokens; with
    int8 embedding and head (the engine reads the embedding rows itself, the head runs its byte kernel)."""
    overrides = dict(overrides)
    head = overrides.pop("head", "fp32")
    model = random_packed_llama(**overrides)
    if head != "fp32":
        model.model.embed_tokens = head_twin(model.model.embed_tokens, head)
        model.lm_head = head_twin(model.lm_head, head)
    assert DecodeEngine.unsupported_reason(model) is None
    eng = DecodeEngine(model, max_len=64, permute=permute)
    with torch.no_grad():  # the engine's own embedding lookup gives the module's values, bit for bit
        assert torch.equal(torch.from_numpy(eng.embed_row(7)), model.model.embed_tokens(torch.tensor([[7]]))[0, 0])
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(2))
    cache = DynamicCache()
    with torch.no_grad():
        full = model(input_ids=ids).logits[0, -1]  # every position's logits, no cache
        ref = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        long = DecodeEngine(model, max_len=64, permute=permute, step_prefill=8)  # 9 tokens: the model's forward
        assert torch.equal(long.prefill(ids), ref)  # the prompt goes through the model itself, last logits only
        assert torch.allclose(ref, full, atol=1e-5, rtol=1e-5)
        short = eng.prefill(ids)  # 9 tokens <= STEP_PREFILL: one engine step each, its own K/V
        assert torch.allclose(short, ref, atol=1e-4, rtol=1e-4) and int(short.argmax()) == int(ref.argmax())
        token, pos = int(ref.argmax()), ids.shape[1]
        for _ in range(6):  # each step: the model's own forward with its cache vs the engine
            want = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits[0, -1]
            got = eng.step(token, pos)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
            token, pos = int(want.argmax()), pos + 1
    tokens, _, _ = eng.generate(ids, 6)
    assert tokens == greedy_generate(model, ids, 6)[0]


def test_decode_engine_refuses_what_it_does_not_run():
    reason = DecodeEngine.unsupported_reason(tiny_llama())
    assert "not a packed PTQ1.61 linear" in reason
    with pytest.raises(ValueError, match="does not serve"):
        DecodeEngine(tiny_llama())
    eng = DecodeEngine(random_packed_llama(), max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        eng.generate(torch.zeros(1, 8, dtype=torch.long), 2)


def test_prefill_computes_the_last_positions_logits_only():
    """The prompt's lm_head runs on its last position only (as transformers' generate does)."""
    from ptq161.runtime.engine import last_logits_only

    model = random_packed_llama()
    assert last_logits_only(model) == {"logits_to_keep": 1}
    rows = []
    hook = model.lm_head.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[-2]))
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    greedy_generate(model, ids, 3)
    DecodeEngine(model, max_len=32).generate(ids, 3)
    hook.remove()
    assert rows and set(rows) == {1}, rows  # never all 12 prompt positions
