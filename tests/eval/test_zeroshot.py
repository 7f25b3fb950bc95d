import json
import sys

import pytest

from ptq161.cli import main
from ptq161.errors import PTQ161Error
from ptq161.eval import zeroshot
from ptq161.eval.zeroshot import TASKS, hellaswag_preprocess, parse_hellaswag_text, parse_tasks

lm_eval = pytest.importorskip("lm_eval")


@pytest.mark.parametrize("name", list(TASKS))
def test_each_local_task_loads_with_the_expected_number_of_documents(shared_data, name):
    assert zeroshot.count_documents(name, shared_data) == TASKS[name].n_docs


def test_hellaswag_text_format_is_parsed_into_lm_eval_fields():
    text = "Roof: A man is on a roof. he\n3\nends a.\nends  b.\nends c.\nends [step] d.\n" * 2
    docs = parse_hellaswag_text(text)
    assert len(docs) == 2
    assert docs[0] == {
        "query": "Roof: A man is on a roof. he",
        "choices": ["ends a.", "ends b.", "ends c.", "ends d."],
        "label": 3,
    }
    with pytest.raises(PTQ161Error):
        parse_hellaswag_text("ctx\nnot a label\na\nb\nc\nd\n")
    with pytest.raises(PTQ161Error):
        parse_hellaswag_text("ctx\n1\na\n")


def test_hellaswag_preprocess_is_lm_evals():
    utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    for s in [" A [title] B [header] c  d ", "plain text.", "x [step] y [substeps] z"]:
        assert hellaswag_preprocess(s) == utils.preprocess(s)


def test_unknown_tasks_get_one_line_error(capsys):
    with pytest.raises(PTQ161Error, match="unknown task"):
        parse_tasks("piqa,mmlu")
    assert main(["eval", "smollm2-135m", "--tasks", "mmlu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task" in err


def test_missing_lm_eval_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail
    with pytest.raises(PTQ161Error, match=r"pip install 'ptq161\[eval\]'"):
        zeroshot.require_lm_eval()


def test_tiny_model_end_to_end_with_limit(shared_data, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert main(["eval", str(tiny_model_dir), "--tasks", "piqa", "--limit", "2"]) == 2  # no eos/bos token: one line
    assert "prefix token" in capsys.readouterr().err
    tok.eos_token = "!"  # lm-eval scores continuations after the eos token as prefix
    tok.save_pretrained(tiny_model_dir)
    out = tmp_path / "zs.json"
    code = main(
        [
            "eval",
            str(tiny_model_dir),
            "--tasks",
            "piqa,winogrande,lambada_openai,race",
            "--limit",
            "4",
            "--batch-size",
            "2",
            "--data-dir",
            str(shared_data),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    res = json.loads(out.read_text())
    assert res["n_samples"] == {"piqa": 4, "winogrande": 4, "lambada_openai": 4}
    assert "race" in res["unavailable"] and "race" not in res["tasks"]
    assert res["versions"]["piqa"] in (1, 1.0, "1.0")
    for task in ("piqa", "winogrande", "lambada_openai"):
        acc = res["tasks"][task]["acc"]
        assert 0.0 <= acc <= 1.0 and (acc * 4) == int(acc * 4)  # a share of 4 documents
    assert res["tasks"]["lambada_openai"]["perplexity"] > 1.0
    assert "not available" in capsys.readouterr().out
