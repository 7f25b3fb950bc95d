import math

import pytest
import torch
from tests.helpers import tiny_llama

from ptq161.errors import DataError
from ptq161.eval import perplexity, windows_of


def test_uniform_logits_give_perplexity_equal_to_vocab_size():
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # all logits 0 -> uniform distribution
    tokens = torch.randint(0, 260, (1, 100), generator=torch.Generator().manual_seed(0))
    r = perplexity(model, tokens, seqlen=32, progress=False)
    assert r.windows == 3 and r.tokens == 96  # remainder of 4 tokens dropped
    assert r.ppl == pytest.approx(260.0, rel=1e-5)


def test_matches_plain_transformers_loss_per_window():
    model = tiny_llama(seed=1)
    tokens = torch.randint(0, 260, (1, 64 * 3 + 5), generator=torch.Generator().manual_seed(1))
    r = perplexity(model, tokens, seqlen=64, progress=False)
    with torch.no_grad():
        losses = [
            model(tokens[:, i * 64 : (i + 1) * 64], labels=tokens[:, i * 64 : (i + 1) * 64]).loss.item()
            for i in range(3)
        ]
    assert r.window_nll == pytest.approx(losses, rel=1e-5)
    assert r.ppl == pytest.approx(math.exp(sum(losses) / 3), rel=1e-5)


def test_windows_and_errors():
    t = torch.arange(10).reshape(1, 10)
    assert windows_of(t, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows_of(t, 4, max_windows=1).shape == (1, 4)
    with pytest.raises(DataError, match="fewer than one window"):
        windows_of(t, 11)
    with pytest.raises(DataError, match="exceeds the model's context"):
        perplexity(tiny_llama(), torch.zeros(1, 2000, dtype=torch.long), seqlen=1024, progress=False)


@pytest.mark.realmodel
def test_real_model_first_windows_match_independent_transformers(smollm2, shared_data):
    """Known answer on the real model: our protocol equals a plain transformers computation."""
    from ptq161.data import eval_tokens

    model, tok = smollm2
    raw = (shared_data / "wikitext-2-raw-v1" / "wiki.test.raw").read_text(encoding="utf-8")
    rows = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    ids = tok("\n\n".join(rows), return_tensors="pt").input_ids
    seqlen, k = 256, 2
    with torch.no_grad():
        ref = math.exp(
            sum(
                model(ids[:, i * seqlen : (i + 1) * seqlen], labels=ids[:, i * seqlen : (i + 1) * seqlen]).loss
                for i in range(k)
            ).item()
            / k
        )
    ts = eval_tokens("wikitext2", tok, data_dir=shared_data)
    r = perplexity(model, ts.tokens, seqlen=seqlen, max_windows=k, progress=False)
    assert abs(r.ppl / ref - 1) < 0.005
    assert 5 < r.ppl < 60  # a working LM on English Wikipedia text


def test_a_perplexity_that_overflows_is_a_non_finite_error():
    from ptq161.errors import NonFiniteError
    from ptq161.eval.perplexity import exp_or_inf

    assert exp_or_inf(1.0) == pytest.approx(2.718281828) and exp_or_inf(1e5) == float("inf")

    class Huge(torch.nn.Module):  # finite logits whose loss is about 1e5 nats per token
        config = None

        def forward(self, input_ids, use_cache=False):
            logits = torch.zeros(*input_ids.shape, 8)
            logits[..., 0] = 1e5
            return type("Out", (), {"logits": logits})()

        def parameters(self):
            yield torch.zeros(1)

    with pytest.raises(NonFiniteError, match="the perplexity of text"):
        perplexity(Huge(), torch.full((1, 40), 3), seqlen=8, dataset="text", progress=False)
