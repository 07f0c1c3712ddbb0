"""A client's bad private-state file is an error naming it, unless ``on-bad-private-state = "fresh"`` (issue 14 A).

The end-to-end check (a real resumed simulation whose clients all refuse their files) is
``tests/server/test_run_safety.py``; these check :class:`clients.state.PrivateStore` itself.
"""

from __future__ import annotations

import pytest
import torch

from clients.state import PrivateStateError, PrivateStore
from lopa_fed.errors import LoPAError
from lopa_fed.federation import FedSettings

EXPECTED = {"prompt.u": (2, 3)}


def _store(tmp_path) -> PrivateStore:
    store = PrivateStore(tmp_path, 0, 2)
    store.save({"prompt.u": torch.ones(2, 3)}, state_tag="t", fingerprint="f", server_round=1)
    return store


def _load(store: PrivateStore, **kw):
    return store.load(state_tag="t", fingerprint="f", expected=EXPECTED, **kw)


def test_good_file_is_restored_and_other_runs_are_ignored(tmp_path):
    store = _store(tmp_path)
    assert torch.equal(_load(store)["prompt.u"], torch.ones(2, 3))
    assert store.load(state_tag="other", fingerprint="f", expected=EXPECTED) is None
    assert store.path.is_file()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda s: s.path.write_bytes(b"\x01\x02truncated"), "it is not a valid safetensors file"),
        (
            lambda s: s.save({"prompt.u": torch.full((2, 3), float("nan"))}, state_tag="t", fingerprint="f",
                             server_round=1),
            "it: tensor(s) prompt.u hold NaN or Inf",
        ),
        (
            lambda s: s.save({"prompt.u": torch.ones(5)}, state_tag="t", fingerprint="f", server_round=1),
            "it holds the wrong tensors (prompt.u differ from this run's private tensors)",
        ),
    ],
)
def test_bad_file_is_an_error_naming_it_and_is_left_alone(tmp_path, damage, reason):
    store = _store(tmp_path)
    damage(store)
    before = store.path.read_bytes()
    with pytest.raises(PrivateStateError) as info:
        _load(store)
    msg = str(info.value)
    assert isinstance(info.value, LoPAError)
    assert msg.startswith(f"private state {store.path} of this run cannot be used: ") and reason in msg
    assert 'on-bad-private-state = "fresh"' in msg
    assert store.path.read_bytes() == before


def test_fresh_moves_the_bad_file_aside(tmp_path, caplog):
    store = _store(tmp_path)
    store.path.write_bytes(b"junk")
    with caplog.at_level("WARNING", logger="flwr.lopa_fed.clients"):
        assert _load(store, on_bad="fresh") is None
    aside = store.path.with_name(store.path.name + ".bad")
    assert not store.path.exists() and aside.read_bytes() == b"junk"
    assert str(aside) in caplog.text


def test_the_setting_is_documented_and_checked():
    assert FedSettings.of().paths.on_bad_private_state == "error"
    assert FedSettings.of(on_bad_private_state="fresh").paths.on_bad_private_state == "fresh"
    with pytest.raises(LoPAError, match="on-bad-private-state: unknown 'ignore'; choose one of error, fresh"):
        FedSettings.of(on_bad_private_state="ignore")
