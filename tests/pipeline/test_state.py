import json

import pytest
import torch

from ptq161.errors import PTQ161Error
from ptq161.pipeline.state import STATE_DIR, RunState, load_optimizer_state, optimizer_state


def test_commit_names_the_state_and_drops_old_files(tmp_path):
    st = RunState(tmp_path, {"a": 1})
    assert st.progress() is None
    st.save("x_0001", {"t": torch.arange(3)})
    st.commit({"done": 1})
    st.save("x_0002", {"t": torch.arange(4)})
    st.commit({"done": 2}, drop=["x_0001"])
    assert st.progress() == {"done": 2}
    assert torch.equal(st.load("x_0002")["t"], torch.arange(4))
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == ["progress.json", "x_0002.safetensors"]
    st.remove()
    assert not (tmp_path / STATE_DIR).exists()


def test_other_settings_or_a_damaged_record_are_refused(tmp_path):
    RunState(tmp_path, {"a": 1}).commit({"done": 1})
    with pytest.raises(PTQ161Error, match="other settings"):
        RunState(tmp_path, {"a": 2}).progress()
    (tmp_path / STATE_DIR / "progress.json").write_text("{not json")
    with pytest.raises(PTQ161Error, match="corrupted"):
        RunState(tmp_path, {"a": 1}).progress()


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    """AdamW saved as safetensors + JSON (nothing pickled) continues exactly as the original."""

    def make():
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(5, 3))
        return p, torch.optim.AdamW([p], lr=1e-2)

    def step(p, opt, start, k):
        for i in range(start, start + k):
            loss = (p * (i + 1)).square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()

    p_ref, opt_ref = make()
    step(p_ref, opt_ref, 0, 6)
    p1, opt1 = make()
    step(p1, opt1, 0, 3)
    tensors, rest = optimizer_state(opt1)
    st = RunState(tmp_path, {})
    st.save("opt", tensors)
    st.commit({"rest": rest})
    p2, opt2 = make()
    p2.data.copy_(p1.data)
    load_optimizer_state(opt2, st.load("opt"), json.loads(json.dumps(st.progress()["rest"])))
    step(p2, opt2, 3, 3)
    assert torch.equal(p2, p_ref)
    p3, opt3 = make()  # without the optimizer state the run differs: the check can fail
    p3.data.copy_(p1.data)
    step(p3, opt3, 3, 3)
    assert not torch.equal(p3, p_ref)
