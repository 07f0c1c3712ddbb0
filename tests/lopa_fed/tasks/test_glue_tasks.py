"""Tests for :mod:`lopa_fed.tasks`: readers on the real GLUE files, templates, metrics, errors."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from lopa_fed import tasks as T  # noqa: E402
from lopa_fed.tasks import (  # noqa: E402
    GLUE_TASKS,
    DataError,
    Example,
    UnknownTaskError,
    get_task,
    label_counts,
    resolve_data_dir,
    train_val_split,
)
from lopa_fed.tasks import files as F  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(T.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def data_dir() -> Path:
    saved = os.environ.pop(T.DATA_DIR_ENV, None)
    try:
        d = resolve_data_dir()
    finally:
        if saved is not None:
            os.environ[T.DATA_DIR_ENV] = saved
    if d is None or not (d / "SST-2").is_dir():
        pytest.skip("shared GLUE data not found")
    return d


# --------------------------------------------------------------------- real files
@pytest.mark.parametrize(
    "task,split,rows,counts",
    [
        ("sst2", "dev", 872, [428, 444]),
        ("sst2", "train", 67349, [29780, 37569]),
        ("sst2-sentences", "train", 6920, [3310, 3610]),
        ("sst2-sentences", "dev", 872, [428, 444]),
        ("rte", "train", 2490, [1249, 1241]),
        ("rte", "dev", 277, [146, 131]),
        ("mrpc", "train", 3668, [1194, 2474]),
        ("mrpc", "dev", 408, [129, 279]),
        ("cola", "train", 8551, [2528, 6023]),
        ("cola", "dev", 1043, [322, 721]),
    ],
)
def test_real_counts(data_dir, task, split, rows, counts):
    t = get_task(task)
    exs = t.read(split, data_dir)
    assert len(exs) == rows
    assert label_counts(exs, t.num_labels) == counts
    assert all(ex.text_a for ex in exs)
    assert all((ex.text_b is not None) == t.is_pair for ex in exs)
    assert exs[17].uid == f"{task}/{split}/17"
    assert len({ex.uid for ex in exs}) == rows


def test_sentence_level_sst2_is_glue_text_and_glue_dev(data_dir):
    """stsa.binary.* undo their PTB escapes, so the dev rows are GLUE's SST-2 dev rows exactly."""
    dev = get_task("sst2-sentences").read("dev", data_dir)
    glue = get_task("sst2").read("dev", data_dir)
    assert sorted((e.text_a, e.label) for e in dev) == sorted((e.text_a, e.label) for e in glue)
    train = get_task("sst2-sentences").read("train", data_dir)
    assert not any("-lrb-" in e.text_a or "\\/" in e.text_a for e in train)
    assert get_task("SST-2") is GLUE_TASKS["sst2"]  # the shared folder name still means GLUE's SST-2


def test_sentence_level_sst2_bad_line(tmp_path):
    _write(tmp_path / "SST-2" / "stsa.binary.train", "1 a fine -lrb- if long -rrb- film\n\n0 dull\nnolabel\n")
    with pytest.raises(DataError) as ei:
        get_task("sst2-sentences").read("train", tmp_path)
    assert "stsa.binary.train line 4: expected '<label> <sentence>'" in str(ei.value)
    _write(tmp_path / "SST-2" / "stsa.binary.train", "1 a fine -lrb- if long -rrb- film\n\n2 dull\n")
    with pytest.raises(DataError, match=r"stsa\.binary\.train line 3: expected label in \{0, 1\}, got '2'"):
        get_task("sst2-sentences").read("train", tmp_path)
    _write(tmp_path / "SST-2" / "stsa.binary.train", "1 a fine -lrb- if long -rrb- film\n\n0 dull\n")
    assert [(e.text_a, e.label) for e in get_task("sst2-sentences").read("train", tmp_path)] == [
        ("a fine ( if long ) film", 1), ("dull", 0)]


def test_rte_label_order(data_dir):
    t = get_task("RTE")
    assert t.label_names == ("entailment", "not_entailment")
    # first row: "0<TAB>No Weapons of Mass Destruction Found in Iraq Yet.<TAB>...<TAB>not_entailment"
    first = t.read("train", data_dir)[0]
    assert first.text_a == "No Weapons of Mass Destruction Found in Iraq Yet."
    assert first.text_b == "Weapons of Mass Destruction Found in Iraq."
    assert t.label_words[first.label] == "No"


def test_mrpc_bom_and_quotes(data_dir):
    exs = get_task("mrpc").read("train", data_dir)
    assert exs[0].label == 1
    assert exs[0].text_a.startswith('Amrozi accused his brother , whom he called " the witness "')
    assert not exs[0].text_a.startswith("\ufeff")


def test_cola_headerless(data_dir):
    exs = get_task("cola").read("train", data_dir, limit=3)
    assert len(exs) == 3
    assert exs[0] == Example(
        "Our friends won't buy this analysis, let alone the next one we propose.", None, 1, "cola/train/0"
    )


def test_auto_resolution_and_limit(data_dir):
    exs = get_task("sst2").read("dev", limit=5)  # data dir found automatically
    assert [e.uid for e in exs] == [f"sst2/dev/{i}" for i in range(5)]
    assert get_task("sst2").read("dev", limit=0) == []


def test_env_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv(T.DATA_DIR_ENV, str(data_dir))
    assert resolve_data_dir() == data_dir
    assert len(get_task("rte").read("dev")) == 277


def test_cache_returns_copies(data_dir):
    t = get_task("sst2")
    a = t.read("dev", data_dir)
    a.clear()
    assert len(t.read("dev", data_dir)) == 872
    with pytest.raises(AttributeError):
        t.read("dev", data_dir)[0].label = 0  # frozen


# ---------------------------------------------------------------------- templates
def test_cloze_and_prefix_sst2(data_dir):
    t = get_task("sst2")
    ex = t.read("dev", data_dir)[0]  # "it 's a charming and often affecting journey . \t1"
    assert ex.text_a == "it 's a charming and often affecting journey ."
    assert ex.label == 1 and t.label_words[ex.label] == "great"
    assert t.cloze(ex, "<mask>") == "it 's a charming and often affecting journey . . It was <mask> ."
    assert t.prompt_prefix(ex) == "it 's a charming and often affecting journey . . It was"
    assert t.plain_text(ex) == (ex.text_a, None)


def test_cloze_and_prefix_rte(data_dir):
    t = get_task("rte")
    ex = t.read("dev", data_dir)[0]
    a = (
        "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, "
        "according to the Christopher Reeve Foundation."
    )
    b = "Christopher Reeve had an accident."
    assert (ex.text_a, ex.text_b) == (a, b)
    assert t.label_words[ex.label] == "No"
    assert t.cloze(ex, "<mask>") == f"{a} ? <mask> , {b}"
    assert t.prompt_prefix(ex) == f"{a} ? {b} Answer:"
    assert t.plain_text(ex) == (a, b)


def test_cloze_braces_in_text():
    t = get_task("cola")
    ex = Example("a {b} {mask} c", None, 0)
    assert t.cloze(ex, "[MASK]") == "a {b} {mask} c This is [MASK] ."
    assert t.prompt_prefix(ex) == "a {b} {mask} c This is"


def test_registry():
    assert set(GLUE_TASKS) == {"sst2", "sst2-sentences", "rte", "mrpc", "cola", "qnli", "mnli", "qqp"}
    for t in GLUE_TASKS.values():
        assert len(t.label_words) == len(t.label_names) == t.num_labels
        assert "{a}" in t.template and "{mask}" in t.template
        assert t.metric in {"accuracy", "f1", "mcc"}
        assert t.hub_config
    assert get_task("mnli").dev_split == "dev_matched"
    assert dict(zip(get_task("mnli").label_names, get_task("mnli").label_words)) == {
        "contradiction": "No",
        "entailment": "Yes",
        "neutral": "Maybe",
    }
    assert get_task("mrpc").label_words == ("No", "Yes") and get_task("mrpc").metric == "f1"
    assert get_task("qqp").metric == "f1" and get_task("cola").metric == "mcc"
    assert get_task("sst2").label_words == ("terrible", "great") and not get_task("sst2").is_pair
    assert get_task("qnli").is_pair


@pytest.mark.parametrize("name", ["sst2", "sst-2", "SST-2", "Sst_2", " SST2 "])
def test_get_task_aliases(name):
    assert get_task(name) is GLUE_TASKS["sst2"]


def test_unknown_task():
    with pytest.raises(UnknownTaskError) as ei:
        get_task("imdb")
    assert isinstance(ei.value, KeyError)
    msg = str(ei.value)
    assert "sst2" in msg and "imdb" in msg and not msg.startswith('"')


# ------------------------------------------------------------------------ metrics
def test_metrics_hand_computed():
    preds = [1, 1, 0, 0, 1, 0]
    labels = [1, 0, 0, 1, 1, 0]  # tp=2 fp=1 fn=1 tn=2
    s = get_task("mrpc").score(preds, labels)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["f1"] == pytest.approx(2 / 3)
    assert "mcc" not in s
    assert get_task("mrpc").main_metric(s) == s["f1"]

    m = get_task("cola").score(preds, labels)
    assert m["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    # tp=3 fp=1 fn=1 tn=0 -> mcc = (0 - 1) / sqrt(4*4*1*1) = -0.25, f1 = 6/8
    m2 = get_task("cola").score([1, 1, 1, 1, 0], [1, 0, 1, 1, 1])
    assert m2["mcc"] == pytest.approx(-0.25)
    assert get_task("qqp").score([1, 1, 1, 1, 0], [1, 0, 1, 1, 1])["f1"] == pytest.approx(0.75)

    acc = get_task("sst2").score([0, 1, 1], [0, 1, 0])
    assert acc == {"accuracy": pytest.approx(2 / 3)}
    assert get_task("mnli").score([0, 1, 2, 2], [0, 1, 2, 1]) == {"accuracy": 0.75}


def test_metrics_degenerate():
    m = get_task("cola").score([1, 1, 1, 1], [0, 1, 1, 0])
    assert m["mcc"] == 0.0 and not math.isnan(m["mcc"])
    assert m["accuracy"] == 0.5
    assert get_task("cola").score([1, 0], [1, 0])["mcc"] == pytest.approx(1.0)
    assert get_task("cola").score([0, 1], [1, 0])["mcc"] == pytest.approx(-1.0)
    f = get_task("mrpc").score([0, 0, 0], [0, 0, 0])
    assert f["f1"] == 0.0 and f["accuracy"] == 1.0
    with pytest.raises(ValueError):
        get_task("sst2").score([0, 1], [0])
    with pytest.raises(ValueError):
        get_task("sst2").score([0, 2], [0, 1])


# ------------------------------------------------------------------------- errors
def test_nonexistent_data_dir(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope"):
        get_task("sst2").read("dev", missing)
    with pytest.raises(DataError, match="nope"):
        resolve_data_dir(missing)
    monkeypatch.setenv(T.DATA_DIR_ENV, str(missing))
    with pytest.raises(DataError, match=T.DATA_DIR_ENV):
        resolve_data_dir()


def test_dir_missing_task_file(tmp_path):
    (tmp_path / "RTE").mkdir()
    with pytest.raises(DataError) as ei:
        get_task("rte").read("train", tmp_path)
    msg = str(ei.value)
    assert str(tmp_path / "RTE" / "train.tsv") in msg and "data dir" in msg
    with pytest.raises(DataError, match="dev_matched.tsv"):
        get_task("mnli").read("dev", tmp_path)


def test_offline_without_local_data(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "default_candidates", lambda: [tmp_path / "a", tmp_path / "b"])
    assert resolve_data_dir() is None
    with pytest.raises(DataError) as ei:
        get_task("rte").read("dev")
    msg = str(ei.value)
    assert str(tmp_path / "a" / "RTE" / "dev.tsv") in msg
    assert "--data-dir" in msg and T.DATA_DIR_ENV in msg


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_corrupt_column_count(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n1\tonly two\n")
    with pytest.raises(DataError) as ei:
        get_task("rte").read("train", tmp_path)
    msg = str(ei.value)
    assert "train.tsv" in msg and "line 3" in msg
    assert "expected 4 tab-separated columns (index, sentence1, sentence2, label), got 2" in msg


def test_corrupt_label(tmp_path):
    _write(tmp_path / "RTE" / "dev.tsv", RTE_HEADER + "0\ta\tb\tmaybe\n")
    with pytest.raises(DataError) as ei:
        get_task("rte").read("dev", tmp_path)
    msg = str(ei.value)
    assert "dev.tsv" in msg and "line 2" in msg and "'maybe'" in msg and "not_entailment" in msg


def test_corrupt_cola_and_empty_text(tmp_path):
    _write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tFine.\ngj04\t1\tno sentence\n")
    with pytest.raises(DataError, match=r"train\.tsv line 2: expected 4 tab-separated columns \(source"):
        get_task("cola").read("train", tmp_path)
    _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\n \t0\n")
    with pytest.raises(DataError, match=r"dev\.tsv line 3: expected non-empty text"):
        get_task("sst2").read("dev", tmp_path)
    _write(tmp_path / "SST-2" / "train.tsv", "text\tlabel\ngood\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv line 1: expected a header"):
        get_task("sst2").read("train", tmp_path)


def test_cache_invalidated_on_change(tmp_path):
    p = _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\n")
    assert len(get_task("sst2").read("dev", tmp_path)) == 1
    p.write_text("sentence\tlabel\ngood\t1\nbad film\t0\n", encoding="utf-8")
    exs = get_task("sst2").read("dev", tmp_path)
    assert [(e.text_a, e.label) for e in exs] == [("good", 1), ("bad film", 0)]


def test_hub_fallback_converts_labels(tmp_path, monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return [
            {"premise": "p0", "hypothesis": "h0", "label": 0, "idx": 0},  # entailment
            {"premise": "p1", "hypothesis": "h1", "label": 2, "idx": 1},  # contradiction
            {"premise": "p2", "hypothesis": "h2", "label": -1, "idx": 2},  # unlabelled
        ]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(F, "default_candidates", lambda: [tmp_path / "none"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    F.load_hub.cache_clear()
    try:
        t = get_task("mnli")
        exs = t.read("dev")
    finally:
        F.load_hub.cache_clear()
    assert calls and calls[0][1:] == ("mnli", "validation_matched")
    assert [t.label_names[e.label] for e in exs] == ["entailment", "contradiction"]
    assert exs[1] == Example("p1", "h1", 0, "mnli/dev/1")


def test_hub_fallback_sentence_level_sst2(tmp_path, monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return [{"text": "a good film", "label": 1, "label_text": "positive"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(F, "default_candidates", lambda: [tmp_path / "none"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    F.load_hub.cache_clear()
    try:
        exs = get_task("sst2-sentences").read("train")
    finally:
        F.load_hub.cache_clear()
    assert calls == [("SetFit/sst2", None, "train")]
    assert exs == [Example("a good film", None, 1, "sst2-sentences/train/0")]


# -------------------------------------------------------------- split and counts
def _toy(n: int) -> list[Example]:
    return [Example(f"s{i}", None, i % 2, f"toy/train/{i}") for i in range(n)]


def test_train_val_split_deterministic_disjoint():
    exs = _toy(250)
    tr, va = train_val_split(exs, 0.1, seed=9876)
    tr2, va2 = train_val_split(exs, 0.1, seed=9876)
    assert (tr, va) == (tr2, va2)
    assert len(va) == 25 and len(tr) == 225
    assert not {e.uid for e in tr} & {e.uid for e in va}
    assert {e.uid for e in tr} | {e.uid for e in va} == {e.uid for e in exs}
    _, va3 = train_val_split(exs, 0.1, seed=1)
    assert va3 != va
    assert len(train_val_split(exs, 0.5, max_val=7)[1]) == 7
    tr1, va1 = train_val_split(_toy(2), 0.1)
    assert len(va1) == 1 and len(tr1) == 1
    assert train_val_split(_toy(1)) == (_toy(1), [])


def test_train_val_split_real(data_dir):
    exs = get_task("rte").read("train", data_dir)
    tr, va = train_val_split(exs)
    assert len(va) == 249 and len(tr) == 2490 - 249
    assert not {e.uid for e in tr} & {e.uid for e in va}


def test_label_counts():
    assert label_counts([]) == []
    assert label_counts([], num_labels=3) == [0, 0, 0]
    assert label_counts([Example("a", None, 2)]) == [0, 0, 1]


def test_no_heavy_imports():
    import ast

    tree = ast.parse(Path(F.__file__).read_text(encoding="utf-8"))  # the GLUE file readers
    top = set()
    for node in tree.body:  # module level only; `datasets` is imported lazily inside a function
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert top <= {"__future__", "csv", "functools", "os", "collections", "dataclasses", "pathlib", "errors"}
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not names & {"torch", "flwr", "onnx", "sklearn"}
