"""Bytes per Flower message for each method and federate mode (no training).

For each frozen model (MiniLM d=384 as a classifier, SmolLM2-135M d=576 and a 7B-class
Llama d=4096 as causal verbalizer models) this builds the real :class:`PromptedModel`
through ``lopa_fed`` (generators via ``build_generator``, LoRA via peft on a copy of the
model), picks the tensors a federate mode sends with ``lopa_fed.federation.federated_names``
and packs them into a ``flwr.app.ArrayRecord`` exactly as ``server/loop.py`` does. Two
sizes are reported: the array payload (``len(Array.data)``, what ``server.metrics.payload_bytes``
counts) and the serialized protobuf of the ArrayRecord (what goes on the wire).

The frozen transformer is instantiated on the ``meta`` device from its config, so the
7B row costs no memory; only the tensors that are sent are materialised (as zeros).
The instance encoder is MiniLM (h=384) for every row: it is the on-device encoder.

    .venv/bin/python bench/communication.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

#: FlowerTune LLM leaderboard baseline (Flower's published numbers): 40.7 GB in total, ~54 MB per message.
FLOWERTUNE = {"total_bytes": 40.7e9, "per_message_bytes": 54e6,
              "source": "FlowerTune LLM leaderboard baseline (7B-class LoRA): 40.7 GB total, ~54 MB per message"}

ROWS = [  # (label, method, lora_r, federate)
    ("LoPA Zs-only", "lopa", 16, "zs"),
    ("LoPA Zs+heads", "lopa", 16, "zs+heads"),
    ("LoPA all", "lopa", 16, "all"),
    ("PT", "pt", 16, "zs"),
    ("IDPG", "idpg", 16, "zs"),
    ("LoRA r=8", "lora", 8, "zs"),
    ("LoRA r=16", "lora", 16, "zs"),
]


class _Tok:
    """Stand-in tokenizer: the communication path never tokenises."""

    pad_token = "<pad>"
    eos_token = "</s>"


def _configs(skip_smollm2_config: bool = False) -> list[tuple[str, object, str]]:
    """``[(name, transformers config, kind)]`` for MiniLM, SmolLM2-135M and a 7B-class Llama."""
    from transformers import AutoConfig, LlamaConfig

    from lopa_fed import weights

    out = [("MiniLM-L6 (d=384)", AutoConfig.from_pretrained(str(weights.minilm_path())), "classifier")]
    smol = None
    if not skip_smollm2_config:
        snaps = sorted((weights.cache_dir() / "gguf").glob("SmolLM2-135M*/config.json"))
        if snaps:
            smol = AutoConfig.from_pretrained(str(snaps[0].parent))
    if smol is None:  # SmolLM2-135M's published shape (same as the GGUF's metadata)
        smol = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
    out.append(("SmolLM2-135M (d=576)", smol, "causal"))
    out.append(("7B-class Llama (d=4096)", LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                                        num_attention_heads=32, num_key_value_heads=32,
                                                        vocab_size=32000), "causal"))
    return out


def _frozen_on_meta(config, kind: str):
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from lopa_fed.backbone import FrozenModel

    with torch.device("meta"):
        model = (AutoModel if kind == "classifier" else AutoModelForCausalLM).from_config(config)
    return FrozenModel(model, _Tok(), kind, f"meta:{config.model_type}:{config.hidden_size}")


def measure(frozen, label: str, method: str, lora_r: int, federate: str, h: int = 384) -> dict:
    """Real ArrayRecord sizes for one (model, method, federate) row."""
    import numpy as np
    import torch
    from flwr.app import Array, ArrayRecord
    from flwr.common.serde import array_record_to_proto

    from lopa_fed.config import LoPAConfig
    from lopa_fed.federation import federated_names
    from lopa_fed.model import PromptedModel

    class _Enc:  # only hidden_size is read when building the generator
        hidden_size = h

    cfg = LoPAConfig(method=method, m=10, r=4, hidden=256, lora_r=lora_r)
    torch.manual_seed(0)
    model = PromptedModel(frozen, cfg, num_labels=2, encoder=_Enc() if method not in ("pt", "head", "lora") else None)
    roles = model.roles()
    names = federated_names(roles, federate)
    params = model.named_trainable()
    arrays = {}
    for n in names:
        p = params[n]
        arrays[n] = np.zeros(tuple(p.shape), np.float32) if p.is_meta else p.detach().float().numpy()
    rec = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}) if arrays else ArrayRecord()
    payload = sum(len(a.data) for a in rec.values())
    wire = len(array_record_to_proto(rec).SerializeToString())
    private = [n for n, r in roles.items() if r == "private"]
    return {
        "row": label, "method": method, "lora_r": lora_r if method == "lora" else None, "federate": federate,
        "tensors": len(names), "params_sent": int(sum(a.size for a in arrays.values())),
        "trainable_params": int(sum(p.numel() for p in params.values())),
        "private_params_kept": int(sum(params[n].numel() for n in private if n not in names)),
        "payload_bytes": int(payload), "wire_bytes": int(wire),
    }


def _ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.1f}x"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(common.RESULTS))
    ap.add_argument("--models", default="all", help="'all' or comma-separated indices 0,1,2 (MiniLM, SmolLM2, 7B)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    meta = common.metadata(seeds=[0])
    cfgs = _configs()
    if args.models != "all":
        cfgs = [cfgs[int(i)] for i in args.models.split(",")]
    results = []
    for name, config, kind in cfgs:
        frozen = _frozen_on_meta(config, kind)
        for label, method, lora_r, federate in ROWS:
            r = measure(frozen, label, method, lora_r, federate)
            r["model"], r["d"], r["kind"] = name, frozen.d, kind
            r["vs_flowertune_per_message"] = FLOWERTUNE["per_message_bytes"] / max(r["wire_bytes"], 1)
            results.append(r)
        del frozen
    n_msgs = FLOWERTUNE["total_bytes"] / FLOWERTUNE["per_message_bytes"]
    for r in results:
        r["total_bytes_same_message_count"] = r["wire_bytes"] * n_msgs
    data = {"meta": meta, "flowertune": {**FLOWERTUNE, "implied_messages": n_msgs}, "results": results,
            "notes": ["bytes per message = one direction of one client-round (down and up carry the same tensors)",
                      "fp32 tensors; MiniLM rows include the shared 2-class head (d*2+2 floats); causal rows use a verbalizer and have no head",
                      "instance encoder h=384 (MiniLM) in every row; LoRA on q/k/v as in the paper"]}
    out = Path(args.out_dir)
    common.write_json("communication", data, out)
    rows = [(r["model"], r["row"], f"{r['params_sent']:,}", common.human_bytes(r["wire_bytes"]),
             _ratio(r['vs_flowertune_per_message']), common.human_bytes(r["total_bytes_same_message_count"]))
            for r in results]
    print(common.markdown_table(["model", "method / federate", "params sent", "bytes / message",
                                 "smaller than FlowerTune 54 MB", f"total for {n_msgs:.0f} msgs (FlowerTune: 40.7 GB)"], rows))
    if not args.no_plot:
        plt = common.plt()
        fig, ax = plt.subplots(figsize=(9, 4.5))
        models = list(dict.fromkeys(r["model"] for r in results))
        labels = [lb for lb, *_ in ROWS]
        w = 0.8 / len(models)
        for i, m in enumerate(models):
            ys = [next(r["wire_bytes"] for r in results if r["model"] == m and r["row"] == lb) for lb in labels]
            ax.bar([j + i * w for j in range(len(labels))], ys, w, label=m)
        ax.axhline(FLOWERTUNE["per_message_bytes"], color="k", ls="--", label="FlowerTune baseline (54 MB)")
        ax.set_yscale("log")
        ax.set_xticks([j + w * (len(models) - 1) / 2 for j in range(len(labels))], labels, rotation=20)
        ax.set_ylabel("bytes per message (log)")
        ax.legend(fontsize=8)
        common.save_fig(fig, "communication", out)
    return data


if __name__ == "__main__":
    main()
