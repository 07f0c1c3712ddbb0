"""One Task interface for GLUE and code tasks: every caller can ask any task the same questions."""

from __future__ import annotations

import pytest

from lopa_fed.errors import ConfigError, LoPAError
from lopa_fed.tasks import CODE_TASKS, GLUE_TASKS, TASKS, Task, UnknownTaskError, get_task


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_implements_the_interface(name):
    task = TASKS[name]
    assert isinstance(task, Task)
    d = task.defaults
    assert d.max_length >= 8 and d.epochs >= 1 and d.r >= 1 and d.metric
    assert d.learning_rate("lopa") > 0 and d.learning_rate("lopa-add") == d.learning_rate("lopa")
    assert (task.num_labels == 0) == (name in CODE_TASKS)


def test_defaults_are_written_once_per_family():
    sst2, mrpc, mbpp, crux = (get_task(n) for n in ("sst2", "mrpc", "mbpp", "cruxeval-o"))
    assert (sst2.defaults.model, sst2.defaults.kind, sst2.defaults.r, sst2.defaults.max_length) == ("default", "auto", 4, 256)
    assert (mrpc.defaults.metric, sst2.defaults.metric) == ("f1", "accuracy")
    assert (mbpp.defaults.model, mbpp.defaults.kind, mbpp.defaults.r, mbpp.defaults.hidden) == ("smollm2", "causal", 1, None)
    assert (mbpp.defaults.max_length, mbpp.defaults.epochs, mbpp.defaults.metric) == (512, 5, "pass@1")
    assert (crux.defaults.max_new_tokens, mbpp.defaults.max_new_tokens) == (64, 256)
    assert mbpp.defaults.learning_rate("lora") == 1e-4 and mbpp.defaults.learning_rate("pt") == 1e-3
    assert sst2.defaults.model_name(None) == "default" and mbpp.defaults.model_name("default") == "smollm2"
    assert mbpp.defaults.model_name("my.gguf") == "my.gguf"


def test_code_task_splits_are_the_seeded_halves():
    task = get_task("cruxeval-o")
    train, test = task.split(task.read_all(), seed=9876)
    assert task.read("train") == train and task.read("dev") == test and task.read("test") == test
    assert task.read("dev", limit=3) == test[:3]
    assert task.read("train", seed=1) != train
    assert {e.uid for e in train}.isdisjoint(e.uid for e in test)


def test_read_refuses_unknown_splits_and_negative_limits():
    for task in (get_task("sst2"), get_task("mbpp")):
        with pytest.raises(ConfigError, match="split must be one of train, dev"):
            task.read("validation")
        with pytest.raises(ConfigError, match="limit must be >= 0"):
            task.read("dev", limit=-1)


def test_check_refuses_what_cannot_run():
    mbpp = get_task("mbpp")
    with pytest.raises(ConfigError, match="classification head"):
        mbpp.check("head", "causal")
    with pytest.raises(ConfigError, match="needs a causal LM"):
        mbpp.check("lopa", "classifier")
    mbpp.check("lopa", "auto")
    for kind in ("auto", "classifier", "mlm", "causal"):
        GLUE_TASKS["sst2"].check("head", kind)


def test_labels_only_where_there_are_classes():
    sst2, crux = get_task("sst2"), get_task("cruxeval-i")
    ex = sst2.read("dev", limit=1)[0]
    assert sst2.label_of(ex) == ex.label and sst2.label_words == ("terrible", "great")
    assert crux.label_of(crux.read("dev", limit=1)[0]) is None and crux.label_words == ()


def test_unknown_task_is_a_user_error():
    with pytest.raises(UnknownTaskError, match="known tasks: sst2, .*mbpp") as ei:
        get_task("humaneval")
    assert isinstance(ei.value, LoPAError) and isinstance(ei.value, KeyError)


def test_zs_init_follows_the_frozen_models_kind():
    sst2, mbpp = get_task("sst2"), get_task("mbpp")
    # N(0, 1) assumes an embedding LayerNorm (BERT/RoBERTa); a causal decoder has none
    assert [sst2.defaults.zs_init_for(k) for k in ("classifier", "mlm", "causal")] == ["normal", "normal", "vocab"]
    # on the code tasks vocabulary rows did not help (README, code tasks), so the paper's init stays
    assert mbpp.defaults.zs_init_for("causal") == "normal"


def test_build_model_records_the_resolved_init():
    from lopa_fed.config import LoPAConfig
    from lopa_fed.model import build_model

    model = build_model(get_task("sst2"), LoPAConfig(method="pt", m=2), model="default", seed=0)
    assert model.config.zs_init == "normal"  # MiniLM is read as a classifier
    assert float(model.prompt.zs.std()) == pytest.approx(1.0, abs=0.3)
