"""``--int8-mode static``: QDQ int8 calibrated on real train text, prompt generator kept in fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_testing import tiny_lopa_classifier

from export.errors import ExportError
from export.parity import torch_prompts
from export.pipeline import export_model
from export.quantize_static import FeedReader, excluded_nodes, generator_nodes, quantize_static_int8
from export.runtime import FP32_FILE, INT8_FILE, PromptRuntime
from lopa_fed.tasks import get_task


@pytest.fixture(scope="module")
def static_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("qstatic")
    pm = tiny_lopa_classifier(root, perturb_seed=2)
    task = get_task("sst2")
    data = task.encode(task.read("dev", limit=24), pm.frozen, 128)
    texts = [it.enc_text for it in data.items[:12]]
    meta = export_model(pm, root / "out", parity_texts=texts, parity_data=data, task="sst2",
                        int8=True, int8_mode="static", calibration_examples=32)
    return pm, root / "out", meta, texts


def test_static_int8_is_calibrated_qdq_with_the_generator_in_fp32(static_export):
    pm, out, meta, texts = static_export
    info = meta["int8"]
    assert info["mode"] == "static" and info["optimization"] == "extended"
    assert info["calibration"] == {"method": "minmax", "examples": 32, "source": "train"}
    model = onnx.load(str(out / INT8_FILE))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32 = onnx.load(str(out / FP32_FILE))
    gen = set(generator_nodes(fp32))
    assert gen and gen <= set(info["fp32_nodes"])
    # every generator MatMul/Gemm reads fp32 weights, not a DequantizeLinear output
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    for n in model.graph.node:
        if n.name in gen and n.op_type in ("MatMul", "Gemm"):
            assert not set(n.input) & dq_out, n.name
    rt = PromptRuntime(out, int8=True)  # picks the recorded "extended" level
    z = rt.prompts(texts, batch_size=1)
    ref = torch_prompts(pm, texts, batch_size=1)
    cos = (z * ref).sum((1, 2)) / np.linalg.norm(z, axis=(1, 2)) / np.linalg.norm(ref, axis=(1, 2))
    assert cos.min() > 0.99
    assert "int8" in meta["parity"]["predictions"]


def test_excluded_nodes_options(static_export):
    _, out, _, _ = static_export
    model = onnx.load(str(out / FP32_FILE))
    heads = set(excluded_nodes(model, 0, False))
    assert heads == set(generator_nodes(model))
    assert heads < set(excluded_nodes(model, 0, True)) < set(excluded_nodes(model, 1, True))


def test_static_needs_calibration(static_export, tmp_path):
    _, out, _, _ = static_export
    with pytest.raises(ExportError, match="calibration inputs"):
        quantize_static_int8(out / FP32_FILE, tmp_path / "x.onnx", [])
    with pytest.raises(ExportError, match="calibration must be one of"):
        quantize_static_int8(out / FP32_FILE, tmp_path / "x.onnx", [{"input_ids": 1}], calibrate="magic")
    reader = FeedReader([{"a": 1}, {"a": 2}])
    assert [reader.get_next(), reader.get_next(), reader.get_next()] == [{"a": 1}, {"a": 2}, None]
    reader.rewind()
    assert reader.get_next() == {"a": 1} and len(reader) == 2


@pytest.mark.parametrize("mode, layers", [("ffn", 0), ("ffn-l1", 1)])
def test_dynamic_modes_between_full_and_balanced(static_export, tmp_path, mode, layers):
    from export.quantize import FP32_LAYERS, quantize_int8, sensitive_nodes

    _, out, _, texts = static_export
    info = quantize_int8(out / FP32_FILE, tmp_path / "int8.onnx", mode)
    assert FP32_LAYERS[mode] == layers and info["mode"] == mode
    pre = onnx.load(str(out / FP32_FILE))
    assert len(info["fp32_nodes"]) == len(sensitive_nodes(pre, layers)) > 0
    assert len(sensitive_nodes(pre, 0)) <= len(info["fp32_nodes"]) < len(sensitive_nodes(pre, 2)) + 1
