"""Private state keyed by partition and encoder identity (issue 15): tiny tensors, no model."""

from __future__ import annotations

import logging

import torch

from clients.state import PrivateStore

STATIC = "static@sentence-transformers/all-MiniLM-L6-v2"
L3 = "sentence-transformers/all-MiniLM-L6-v2@layers=3"
FULL = "sentence-transformers/all-MiniLM-L6-v2"


def _save(store: PrivateStore, tensors: dict, rnd: int, tag: str = "t0") -> None:
    store.save(tensors, state_tag=tag, fingerprint="fp", server_round=rnd, extra={"encoder-name": "x"})


def test_files_are_keyed_by_encoder(tmp_path):
    names = [PrivateStore(tmp_path, 3, 10, encoder=e).path.name for e in (FULL, L3, STATIC, "")]
    assert names == ["partition-3-of-10.safetensors", "partition-3-of-10.minilm-l3.safetensors",
                     "partition-3-of-10.static.safetensors", "partition-3-of-10.safetensors"]
    store = PrivateStore(tmp_path, 3, 10, encoder=STATIC)
    _save(store, {"prompt.u": torch.ones(2)}, 1)
    assert store.metadata()["encoder"] == STATIC and store.metadata()["encoder-name"] == "x"
    got = store.load(state_tag="t0", fingerprint="fp", expected={"prompt.u": (2,)})
    assert got is not None and store.switched_from is None


def test_tier_switch_is_detected_and_never_loads(tmp_path, caplog):
    old = PrivateStore(tmp_path, 0, 2, encoder=STATIC)
    _save(old, {"prompt.u": torch.ones(1, 8)}, 2)
    new = PrivateStore(tmp_path, 0, 2, encoder=L3)
    assert new.previous_encoder("t0") == STATIC
    assert new.previous_encoder("another-run") is None  # files of another run are not a switch
    with caplog.at_level(logging.WARNING, logger="flwr.lopa_fed.clients"):
        got = new.load(state_tag="t0", fingerprint="fp", expected={"prompt.u": (4, 8)})
    assert got is None and new.switched_from == STATIC
    assert "switched its instance encoder from " + STATIC + " to " + L3 in caplog.text
    assert old.path.is_file()  # the old heads stay in their own file
    # after a round on the new encoder, it restores its own heads and reports no switch
    _save(new, {"prompt.u": torch.zeros(4, 8)}, 3)
    got = new.load(state_tag="t0", fingerprint="fp", expected={"prompt.u": (4, 8)})
    assert got is not None and new.switched_from is None
    # other partitions are not affected
    assert PrivateStore(tmp_path, 1, 2, encoder=L3).previous_encoder("t0") is None


def test_same_file_name_with_another_encoder_is_a_switch(tmp_path):
    """Non-tier encoders share the plain file name; the recorded identity still tells them apart."""
    _save(PrivateStore(tmp_path, 0, 2, encoder="/models/enc-a"), {"prompt.u": torch.ones(3)}, 1)
    b = PrivateStore(tmp_path, 0, 2, encoder="/models/enc-b")
    assert b.path == PrivateStore(tmp_path, 0, 2, encoder="/models/enc-a").path
    assert b.load(state_tag="t0", fingerprint="fp", expected={"prompt.u": (3,)}) is None
    assert b.switched_from == "/models/enc-a"
