"""Fast export tests on tiny random encoders (real SST-2/RTE dev text, random weights).

The tiny instance encoder (BERT, h=32) and tiny frozen model (BERT, d=16) are saved to
temporary model directories, so checkpoints, ``export_checkpoint`` and the CLI load them
by path exactly as they load real models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from export_testing import perturb, run_cli, run_cli_quiet, save_tiny_causal, save_tiny_models

from export.errors import ExportError
from export.graph import PromptGraph
from export.host import predict_with_prompts
from export.parity import torch_prompts
from export.pipeline import export_checkpoint, export_model
from export.runtime import ExportFormatError, PromptRuntime
from lopa_fed.backbone import FrozenModel
from lopa_fed.checkpoint import CheckpointError, save_checkpoint, save_tensors
from lopa_fed.config import PROMPT_METHODS, LoPAConfig
from lopa_fed.data import encode_examples
from lopa_fed.encoder import InstanceEncoder
from lopa_fed.model import PromptedModel
from lopa_fed.tasks import get_task

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub on this machine

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Directories of a tiny random BERT encoder (h=32) and frozen model (d=16), MiniLM's tokenizer."""
    return save_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def tiny(tiny_dirs):
    enc_dir, frz_dir = tiny_dirs
    frozen = FrozenModel.load(frz_dir, "classifier")
    encoder = InstanceEncoder.load(enc_dir)
    task = get_task("sst2")
    data = encode_examples(task.read("dev", limit=48), task, frozen, 128)
    rte = get_task("rte")
    pairs = [rte.plain_text(ex) for ex in rte.read("dev", limit=8)]
    return {"frozen": frozen, "encoder": encoder, "task": task, "data": data, "pairs": pairs}


def _model(tiny, method: str, seed: int = 0) -> PromptedModel:
    """A perturbed tiny model; zs_init is explicit because load_model (build_model) resolves "auto"."""
    torch.manual_seed(seed)
    pm = PromptedModel(
        tiny["frozen"], LoPAConfig(method, m=3, r=2, hidden=8, zs_init="normal"), num_labels=2, encoder=tiny["encoder"]
    )
    perturb(pm, seed)
    return pm.eval()


def _texts(tiny, n: int = 16) -> list:
    return [it.enc_text for it in tiny["data"].items[:n]] + tiny["pairs"][:4]


@pytest.fixture(scope="module")
def exports(tiny, tmp_path_factory):
    """Lazily export each method once per module: ``exports(method) -> (model, out_dir, meta)``.

    The dynamo exporter costs seconds per call even for tiny models, so tests share exports.
    LoPA is exported with int8 too.
    """
    root = tmp_path_factory.mktemp("exports")
    cache: dict[str, tuple] = {}

    def get(method: str):
        if method not in cache:
            pm = _model(tiny, method, seed=1)
            out = root / method
            meta = export_model(
                pm,
                out,
                parity_texts=_texts(tiny),
                parity_data=tiny["data"],
                task="sst2",
                int8=method == "lopa",
            )
            cache[method] = (pm, out, meta)
        return cache[method]

    return get


@pytest.fixture(scope="module")
def lopa_export(exports):
    """The LoPA export (fp32 + int8) shared by the runtime and error tests."""
    return exports("lopa")


# ---------------------------------------------------------------------------- parity for every method
@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_fp32_parity_every_method(tiny, exports, method):
    pm, out, meta = exports(method)
    texts = _texts(tiny)
    fp32 = meta["parity"]["fp32"]
    assert fp32["passed"] and fp32["max_abs_diff"] <= 1e-4, fp32
    assert meta["parity"]["predictions"]["fp32"]["agreement"] == 1.0
    assert meta["method"] == method and meta["num_tokens"] == pm.config.num_tokens and meta["d"] == 16
    # recompute independently: runtime Z vs PyTorch Z
    z = PromptRuntime(out).prompts(texts)
    ref = torch_prompts(pm, texts)
    assert z.shape == (len(texts), pm.config.num_tokens, 16)
    np.testing.assert_allclose(z, ref, atol=1e-4, rtol=0)
    if method != "pt":  # the prompt depends on the input
        assert np.abs(ref[0] - ref[1]).max() > 1e-3
    saved = json.loads((out / "export.json").read_text())
    assert saved == json.loads(json.dumps(meta))


def test_export_json_contents(lopa_export, tiny):
    pm, out, meta = lopa_export
    assert {p.name for p in out.iterdir()} == {
        "export.json",
        "prompt_generator.onnx",
        "prompt_generator.int8.onnx",
        "tokenizer.json",
        "host.safetensors",
    }
    assert meta["m"] == 3 and meta["r"] == 2 and meta["d"] == 16 and meta["h"] == 32
    assert meta["encoder"]["identity"] == tiny["encoder"].identity
    assert (
        meta["tokenizer"]["identity"] == tiny["encoder"].identity and meta["tokenizer"]["max_length"] == 256
    )
    assert meta["frozen_model"]["embedding_sha256"] == tiny["frozen"].embedding_hash()
    assert meta["onnx"]["opset"] == 18
    for name, f in meta["files"].items():
        assert (out / name).stat().st_size == f["bytes"]
    int8 = meta["parity"]["int8"]
    assert int8["max_abs_diff"] >= int8["mean_abs_diff"] >= 0
    # balanced int8: both layers of the 2-layer tiny encoder (q, k, v, out, ffn-in, ffn-out) stay fp32
    assert meta["int8"]["mode"] == "balanced" and len(meta["int8"]["fp32_nodes"]) == 12
    assert 0.0 <= meta["parity"]["predictions"]["int8"]["agreement"] <= 1.0
    assert meta["parity"]["predictions"]["examples"] == len(tiny["data"])
    # no temporary files are left next to the output
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_graph_is_onnx_checked_and_dynamic(lopa_export):
    import onnx

    _, out, _ = lopa_export
    model = onnx.load(str(out / "prompt_generator.onnx"))
    onnx.checker.check_model(model)
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [["batch", "seq"], ["batch", "seq"]]
    out_dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims[1:] == [3, 16] and isinstance(out_dims[0], str)


def test_dynamic_axes_one_file(lopa_export):
    pm, out, _ = lopa_export
    rt = PromptRuntime(out)
    graph = PromptGraph(pm.prompt, pm.encoder.net).eval()
    g = torch.Generator().manual_seed(0)
    for b in (1, 3, 32):
        for L in (1, 7, 64, 200):
            ids = torch.randint(1000, 30000, (b, L), generator=g)
            mask = torch.ones(b, L, dtype=torch.long)
            if L > 1:
                mask[0, L // 2 :] = 0  # one padded row
            z = rt.run(ids.numpy(), mask.numpy())
            with torch.no_grad():
                ref = graph(ids, mask).numpy()
            assert z.shape == (b, 3, 16)
            np.testing.assert_allclose(z, ref, atol=1e-4, rtol=0, err_msg=f"batch {b}, length {L}")


def test_int8_full_mode_and_sensitive_nodes(lopa_export, tiny, tmp_path):
    import onnx

    from export.quantize import quantize_int8, sensitive_nodes

    pm, out, _ = lopa_export
    fp32 = onnx.load(str(out / "prompt_generator.onnx"))
    assert len(sensitive_nodes(fp32, first_layers=0)) == 2  # the FFN output projection of each layer
    assert len(sensitive_nodes(fp32, first_layers=1)) == 7  # layer 0 entirely + layer 1's FFN output
    d = _copy(out, tmp_path)
    info = quantize_int8(d / "prompt_generator.onnx", d / "prompt_generator.int8.onnx", mode="full")
    assert info["mode"] == "full" and info["fp32_nodes"] == []
    ops = {n.op_type for n in onnx.load(str(d / "prompt_generator.int8.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    z = PromptRuntime(d, int8=True, verify_hash=False).prompts(_texts(tiny, 8))
    assert z.shape == (12, 3, 16) and np.isfinite(z).all()
    with pytest.raises(ExportError, match="int8 mode"):
        quantize_int8(d / "prompt_generator.onnx", d / "x.onnx", mode="int4")


def test_tie_aware_prediction_margins():
    from export.parity import margins

    np.testing.assert_allclose(margins(np.array([[0.0, 1.0], [2.0, 2.0 + 1e-7]])), [1.0, 1e-7], rtol=1e-6)
    np.testing.assert_allclose(margins(np.array([[3.0, 1.0, 2.5]])), [0.5])


def test_runtime_tokenizes_like_pytorch(lopa_export, tiny):
    _, out, _ = lopa_export
    rt = PromptRuntime(out)
    texts = _texts(tiny, 24) + [("only a", None), "x" * 3000]  # mixed pair batch and truncation
    got = rt.encode(texts)
    want = tiny["encoder"].tokenize(texts)
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"].numpy())
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"].numpy())


def test_runtime_threads_and_batching(lopa_export, tiny):
    _, out, _ = lopa_export
    texts = [it.enc_text for it in tiny["data"].items[:16]]  # not mixed with pairs: that changes tokenisation
    a = PromptRuntime(out, threads=1).prompts(texts)
    b = PromptRuntime(out, threads=2).prompts(texts, batch_size=5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="threads"):
        PromptRuntime(out, threads=0)


def test_runtime_without_torch_subprocess(lopa_export, tiny, tmp_path):
    pm, out, _ = lopa_export
    texts = _texts(tiny)
    np.save(tmp_path / "ref.npy", torch_prompts(pm, texts))
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = textwrap.dedent(
        f"""
        import importlib.abc, json, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "lopa_fed"):
                    raise ImportError(f"{{name}} is blocked in this test")
                return None
        sys.meta_path.insert(0, Block())
        import numpy as np
        from export.runtime import PromptRuntime
        texts = [t if isinstance(t, str) else tuple(t) for t in json.load(open({str(tmp_path / "texts.json")!r}))]
        z = PromptRuntime({str(out)!r}, threads=1).prompts(texts)
        ref = np.load({str(tmp_path / "ref.npy")!r})
        assert z.shape == ref.shape, (z.shape, ref.shape)
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
        assert not bad, bad
        print("MAXDIFF", float(np.abs(z - ref).max()))
        """
    )
    res = subprocess.run([PY, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    diff = float(res.stdout.split("MAXDIFF")[1])
    assert diff <= 1e-4


def test_infer_matches_pytorch_in_process(lopa_export, tiny):
    pm, out, _ = lopa_export
    rt = PromptRuntime(out)
    ref = predict_with_prompts(pm, tiny["data"], None)
    got = predict_with_prompts(pm, tiny["data"], rt.prompts)
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------- overwrite and errors
def test_refuses_overwrite_without_force(tiny, tmp_path):
    pm = _model(tiny, "pt")
    out = tmp_path / "exp"
    export_model(pm, out, parity_texts=_texts(tiny, 4), task="sst2", int8=False)
    before = (out / "export.json").read_text()
    with pytest.raises(ExportError, match="--force"):
        export_model(pm, out, parity_texts=_texts(tiny, 4), task="sst2")
    assert (out / "export.json").read_text() == before
    (out / "prompt_generator.int8.onnx").write_bytes(b"stale")
    export_model(pm, out, parity_texts=_texts(tiny, 4), task="sst2", force=True)
    assert not (out / "prompt_generator.int8.onnx").exists()  # no stale file of an older export
    PromptRuntime(out)


def test_fp32_parity_failure_is_clear(tiny, tmp_path, monkeypatch):
    import export.pipeline as ex

    pm = _model(tiny, "pt")  # cheapest export; the check itself is method-independent
    real = ex.torch_prompts
    monkeypatch.setattr(ex, "torch_prompts", lambda *a, **k: real(*a, **k) + 1e-3)
    with pytest.raises(ExportError, match=r"fp32 parity check failed.*exceeds the tolerance"):
        export_model(pm, tmp_path / "bad", parity_texts=_texts(tiny, 4), task="sst2")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def _copy(out: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


def test_corrupt_onnx(lopa_export, tmp_path):
    d = _copy(lopa_export[1], tmp_path)
    (d / "prompt_generator.onnx").write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(ExportFormatError, match="sha256 differs"):
        PromptRuntime(d)
    with pytest.raises(ExportFormatError, match="not a loadable ONNX model"):
        PromptRuntime(d, verify_hash=False)


def test_missing_onnx(lopa_export, tmp_path):
    d = _copy(lopa_export[1], tmp_path)
    (d / "prompt_generator.int8.onnx").unlink()
    with pytest.raises(ExportFormatError, match="int8.onnx is missing"):
        PromptRuntime(d, int8=True)


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("num_tokens", 7, "axis 1 is 3 but the sidecar's num_tokens is 7"),
        ("d", 99, "axis 2 is 16 but the sidecar's d is 99"),
        ("format", "something/else", "unknown format"),
    ],
)
def test_mismatched_sidecar(lopa_export, tmp_path, key, value, pattern):
    d = _copy(lopa_export[1], tmp_path)
    meta = json.loads((d / "export.json").read_text())
    meta[key] = value
    (d / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ExportFormatError, match=pattern):
        PromptRuntime(d)


def test_sidecar_from_another_export(lopa_export, exports, tmp_path):
    """An ONNX file of one export with the sidecar of another (different T) is caught."""
    other = _copy(exports("lopa-concat")[1], tmp_path)
    shutil.copy(lopa_export[1] / "prompt_generator.onnx", other / "prompt_generator.onnx")
    with pytest.raises(ExportFormatError, match="sha256 differs"):
        PromptRuntime(other)
    with pytest.raises(ExportFormatError, match="num_tokens is 6"):
        PromptRuntime(other, verify_hash=False)


def test_missing_or_bad_sidecar_and_tokenizer(lopa_export, tmp_path):
    d = _copy(lopa_export[1], tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(ExportFormatError, match="tokenizer file .*tokenizer.json is missing"):
        PromptRuntime(d)
    (d / "export.json").write_text("{not json")
    with pytest.raises(ExportFormatError, match="not valid JSON"):
        PromptRuntime(d)
    (d / "export.json").unlink()
    with pytest.raises(ExportFormatError, match="export.json is missing"):
        PromptRuntime(d)
    with pytest.raises(ExportFormatError, match="does not exist"):
        PromptRuntime(tmp_path / "nowhere")


def test_empty_and_bad_texts(lopa_export):
    rt = PromptRuntime(lopa_export[1])
    with pytest.raises(ValueError, match="empty text list"):
        rt.prompts([])
    with pytest.raises(TypeError, match="not a single string"):
        rt.prompts("just a string")
    with pytest.raises(TypeError, match="text 1 must be a str"):
        rt.prompts(["ok", 3])


# ---------------------------------------------------------------------------- checkpoints, client state, CLI
@pytest.fixture(scope="module")
def tiny_checkpoint(tiny, tmp_path_factory):
    pm = _model(tiny, "lopa", seed=3)
    ck = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    save_checkpoint(ck, pm, task="sst2")
    return pm, ck


def test_export_checkpoint_with_client_state(tiny, tiny_checkpoint, tmp_path):
    pm, ck = tiny_checkpoint
    client = _model(tiny, "lopa", seed=4)  # different private heads
    state = client.state(client.private_names())
    save_tensors(tmp_path / "client.safetensors", state)
    meta = export_checkpoint(
        ck, tmp_path / "out", client_state=tmp_path / "client.safetensors", agreement_examples=16
    )
    assert meta["source"]["client_state"].endswith("client.safetensors")
    # expected Z: global Zs from the checkpoint + the client's heads
    expect = _model(tiny, "lopa", seed=3)
    expect.load_state(state)
    texts = _texts(tiny, 8)
    np.testing.assert_allclose(
        PromptRuntime(tmp_path / "out").prompts(texts), torch_prompts(expect, texts), atol=1e-4
    )
    bad = {k: v for k, v in list(state.items())[1:]}
    save_tensors(tmp_path / "bad.safetensors", bad)
    with pytest.raises(CheckpointError, match="private tensors"):
        export_checkpoint(ck, tmp_path / "out2", client_state=tmp_path / "bad.safetensors")


@pytest.fixture(scope="module")
def cli_export(tiny_checkpoint, tmp_path_factory):
    """``lopa-fed export`` of the tiny checkpoint: ``(out_dir, exit code, stdout)``."""
    _, ck = tiny_checkpoint
    out = tmp_path_factory.mktemp("cli") / "cli-out"
    code, stdout = run_cli_quiet(["export", "--checkpoint", str(ck), "--out", str(out), "--agreement-examples", "16"])
    return out, code, stdout


def test_cli_export_and_infer(tiny, tiny_checkpoint, cli_export, tmp_path, capsys):
    pm, ck = tiny_checkpoint
    out, code, stdout = cli_export
    assert code == 0 and "fp32 parity" in stdout
    assert run_cli(["export", "--checkpoint", str(ck), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    texts = [it.enc_text[0] for it in tiny["data"].items[:12]]
    args = ["infer", "--prompt-dir", str(out), "--json"]
    for t in texts:
        args += ["--text", t]
    assert run_cli(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ref = predict_with_prompts(pm, tiny["data"].subset(range(12)), None)
    assert [r["index"] for r in rows] == ref.tolist()
    assert [r["label"] for r in rows] == [("terrible", "great")[i] for i in ref]
    # --dev: the real dev set through ONNX Z equals the PyTorch path
    assert run_cli(["infer", "--prompt-dir", str(out), "--dev", "48", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == predict_with_prompts(pm, tiny["data"], None).tolist()
    # errors: nothing to classify, empty export dir, pair task mismatch
    assert run_cli(["infer", "--prompt-dir", str(out)]) == 2
    assert "nothing to classify" in capsys.readouterr().err
    assert run_cli(["infer", "--prompt-dir", str(tmp_path), "--text", "x"]) == 2
    assert "export.json is missing" in capsys.readouterr().err
    assert (
        run_cli(["infer", "--prompt-dir", str(out), "--text", "a", "--text", "b", "--text-b", "c"])
        == 2
    )
    assert "one --text-b per --text" in capsys.readouterr().err


def test_host_rejects_other_frozen_model(cli_export, tmp_path, capsys):
    out = _copy(cli_export[0], tmp_path)
    meta = json.loads((out / "export.json").read_text())
    meta["frozen_model"]["embedding_sha256"] = "0" * 64
    (out / "export.json").write_text(json.dumps(meta))
    assert run_cli(["infer", "--prompt-dir", str(out), "--text", "fine"]) == 2
    assert "embedding matrix hash" in capsys.readouterr().err
    (out / "host.safetensors").unlink()
    meta["frozen_model"]["embedding_sha256"] = json.loads((cli_export[0] / "export.json").read_text())[
        "frozen_model"
    ]["embedding_sha256"]
    (out / "export.json").write_text(json.dumps(meta))
    assert run_cli(["infer", "--prompt-dir", str(out), "--text", "fine"]) == 2
    assert "host.safetensors is missing" in capsys.readouterr().err


def test_export_package_is_import_light():
    code = "import sys, export, export.runtime; bad=[m for m in sys.modules if m.split('.')[0] in ('torch','transformers','flwr')]; print(bad); assert not bad"
    res = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_export_never_imports_flwr():
    import ast

    for f in (REPO / "export").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] == "flwr"], f


def test_export_code_task_checkpoint_and_infer_refuses_it(tiny, tmp_path, capsys):
    """A code-task generator exports with Z parity on real CruxEval prompts; infer says how to use it."""
    frozen = FrozenModel.load(save_tiny_causal(tmp_path), "causal")  # code tasks need a causal LM
    torch.manual_seed(5)
    pm = PromptedModel(frozen, LoPAConfig("lopa", m=3, r=2, hidden=8, zs_init="normal"), num_labels=0, encoder=tiny["encoder"])
    perturb(pm, 5)
    pm.eval()
    ck = tmp_path / "code-ckpt"
    save_checkpoint(ck, pm, task="cruxeval-o")
    meta = export_checkpoint(ck, tmp_path / "code-out", parity_examples=6)
    assert meta["task"] == "cruxeval-o" and meta["label_words"] == []
    assert meta["parity"]["fp32"]["examples"] == 6 and meta["parity"]["fp32"]["passed"]
    assert "predictions" not in meta["parity"]
    code = get_task("cruxeval-o")
    prompts = [(ex.prompt, None) for ex in code.read("dev", limit=3)]  # the test half's first problems
    np.testing.assert_allclose(
        PromptRuntime(tmp_path / "code-out").prompts(prompts), torch_prompts(pm, prompts), atol=1e-4
    )
    code_ = run_cli(["infer", "--prompt-dir", str(tmp_path / "code-out"), "--text", "x"])
    assert code_ == 2 and "PromptRuntime" in capsys.readouterr().err
