"""``lopa-fed export --web``: a self-contained static bundle that computes Z in a web browser.

::

    web/
      index.html                  # demo: type a sentence → Z shape, norm, time; optional model host
      lopa-prompt.js              # ES module: await LoPAPrompt.load(url); await prompt.z(text, textPair?)
      bundle.json                 # what the module reads: model file, T, d, tokenizer limits, z_hash
      prompt_generator[.int8].onnx  # the graph (single file, fp32 or int8)
      tokenizer/tokenizer.json    # the instance encoder's tokenizer (padding/truncation stripped)
      tokenizer/tokenizer_config.json
      vendor/                     # onnxruntime-web (wasm) + transformers.js, copied from node_modules

Nothing is fetched from a CDN or a model hub at run time. The JavaScript packages come from a
local ``node_modules`` folder made by ``npm ci`` from the committed lockfile in ``export/web/``
(:func:`find_node_modules`; ``--web-modules DIR`` or ``$LOPA_FED_NODE_MODULES`` point elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import ExportError
from .runtime import FP32_FILE, INT8_FILE, TOKENIZER_FILE, read_sidecar, sha256_file

__all__ = [
    "NODE_MODULES_ENV", "WEB_DIR", "WebBundleError", "default_node_modules", "find_node_modules",
    "write_web_bundle",
]

#: Environment variable naming the node_modules folder to copy the JavaScript runtime from.
NODE_MODULES_ENV = "LOPA_FED_NODE_MODULES"
WEB_DIR = "web"
BUNDLE_FORMAT = "lopa-fed-web/1"
SOURCES = Path(__file__).resolve().parent / "web"
#: node_modules-relative source → name in ``web/vendor/``.
VENDOR = {
    "onnxruntime-web/dist/ort.wasm.bundle.min.mjs": "ort.wasm.bundle.min.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.mjs",
    "@huggingface/transformers/dist/transformers.web.min.js": "transformers.web.min.js",
    "@huggingface/transformers/LICENSE": "LICENSE.transformers.js",
}
#: Bare imports of transformers.web.min.js, answered by the one onnxruntime-web bundle.
TRANSFORMERS_IMPORTS = ('from"onnxruntime-web/webgpu"', 'from"onnxruntime-common"')


class WebBundleError(ExportError):
    """The web bundle cannot be written (usually: the npm packages are not installed)."""


def default_node_modules() -> Path:
    """``$LOPA_FED_NODE_MODULES``, else ``export/web/node_modules`` (made by ``npm ci`` there)."""
    env = os.environ.get(NODE_MODULES_ENV)
    return Path(env) if env else SOURCES / "node_modules"


def find_node_modules(path: str | os.PathLike[str] | None = None) -> Path:
    """The node_modules folder holding every :data:`VENDOR` file; :class:`WebBundleError` if it does not."""
    root = Path(path) if path is not None else default_node_modules()
    missing = [src for src in VENDOR if not (root / src).is_file()]
    if missing:
        raise WebBundleError(
            f"the web bundle needs onnxruntime-web and @huggingface/transformers in {root} (missing {missing[0]}); "
            f"run `npm ci --prefix {SOURCES}` (or `make test`), or point --web-modules / ${NODE_MODULES_ENV} "
            "at a node_modules folder that has them"
        )
    return root


def package_version(root: Path, name: str) -> str | None:
    """``version`` of an installed npm package (``None`` when unreadable)."""
    try:
        return str(json.loads((root / name / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def write_web_bundle(
    export_dir: str | os.PathLike[str],
    web_dir: str | os.PathLike[str] | None = None,
    *,
    int8: bool = False,
    node_modules: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the static web bundle of an export directory and describe it.

    Parameters
    ----------
    export_dir : path
        A directory written by ``lopa-fed export`` (``export.json``, the ONNX files, ``tokenizer.json``).
    web_dir : path, optional
        Where to write the bundle (default ``export_dir/web``); replaced if it exists.
    int8 : bool
        Ship ``prompt_generator.int8.onnx`` instead of the fp32 graph.
    node_modules : path, optional
        Where the npm packages are (default :func:`default_node_modules`).

    Returns
    -------
    dict
        ``precision``, ``bytes`` (the whole bundle), ``sizes`` (bundle bytes per precision the
        export holds), ``files`` (name → bytes), ``model_file`` and the npm package versions.

    Raises
    ------
    WebBundleError
        The npm packages are missing, or the export lacks the requested ONNX file.
    """
    root = find_node_modules(node_modules)
    src = Path(export_dir)
    meta = read_sidecar(src)
    model_file = INT8_FILE if int8 else FP32_FILE
    if model_file not in meta["files"] or not (src / model_file).is_file():
        raise WebBundleError(f"{src} has no {model_file} for the web bundle" + (" (export with --int8)" if int8 else ""))
    out = Path(web_dir) if web_dir is not None else src / WEB_DIR
    if out.exists():
        shutil.rmtree(out)
    (out / "vendor").mkdir(parents=True)
    shutil.copyfile(src / model_file, out / model_file)
    tokenizer = _write_tokenizer(src, out, meta) if meta["uses_features"] else None
    _write_vendor(root, out / "vendor")
    for name in ("lopa-prompt.js", "index.html"):
        shutil.copyfile(SOURCES / "src" / name, out / name)
    bundle = _bundle_meta(meta, model_file, tokenizer, src, root)
    (out / "bundle.json").write_text(json.dumps(bundle, indent=2))
    return _describe(out, src, meta, model_file, bundle)


def _write_tokenizer(src: Path, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer/tokenizer.json`` without the stored padding/truncation (the module truncates) and a config."""
    tmeta = meta.get("tokenizer") or {}
    tj = json.loads((src / tmeta.get("file", TOKENIZER_FILE)).read_text(encoding="utf-8"))
    tj["padding"], tj["truncation"] = None, None
    tdir = out / "tokenizer"
    tdir.mkdir()
    (tdir / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    cls = str(tmeta.get("class") or "PreTrainedTokenizer").removesuffix("Fast")
    config = {
        "tokenizer_class": cls,
        "model_max_length": 1_000_000,  # lopa-prompt.js truncates longest-first to max_length itself
        "pad_token": tmeta.get("pad_token"),
    }
    (tdir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return {"dir": "tokenizer", "max_length": int(tmeta["max_length"]), "truncation": "longest_first"}


def _write_vendor(root: Path, vendor: Path) -> None:
    """Copy the JavaScript runtime; point transformers.js's bare imports at the local onnxruntime-web."""
    for rel, name in VENDOR.items():
        if name != "transformers.web.min.js":
            shutil.copyfile(root / rel, vendor / name)
            continue
        code = (root / rel).read_text(encoding="utf-8")
        for spec in TRANSFORMERS_IMPORTS:
            if spec not in code:
                raise WebBundleError(f"{root / rel} has no {spec!r} import; this transformers.js version is not supported")
            code = code.replace(spec, 'from"./ort.wasm.bundle.min.mjs"')
        (vendor / name).write_text(code, encoding="utf-8")


def _bundle_meta(
    meta: dict[str, Any], model_file: str, tokenizer: dict[str, Any] | None, src: Path, root: Path
) -> dict[str, Any]:
    """``bundle.json``: everything ``lopa-prompt.js`` reads."""
    pair = False
    if meta.get("task"):
        from lopa_fed.tasks import get_task

        pair = bool(getattr(get_task(meta["task"]), "is_pair", False))
    return {
        "format": BUNDLE_FORMAT,
        "method": meta["method"],
        "num_tokens": int(meta["num_tokens"]),
        "d": int(meta["d"]),
        "task": meta.get("task"),
        "label_words": meta.get("label_words") or [],
        "pair_task": pair,
        "precision": "int8" if model_file == INT8_FILE else "fp32",
        "model": {"file": model_file, "bytes": (src / model_file).stat().st_size,
                  "sha256": sha256_file(src / model_file), "graph_optimization": _optimization(meta, model_file)},
        "tokenizer": tokenizer,
        "z_hash": (meta.get("frozen_model") or {}).get("embedding_sha256"),
        "versions": {n: package_version(root, n) for n in ("onnxruntime-web", "@huggingface/transformers")},
    }


def _optimization(meta: dict[str, Any], model_file: str) -> str:
    """onnxruntime-web's ``graphOptimizationLevel`` for the shipped graph (what the Python runtime uses)."""
    level = str((meta.get("int8") or {}).get("optimization", "basic")) if model_file == INT8_FILE else "basic"
    return "disabled" if level == "disable" else level


def _describe(out: Path, src: Path, meta: dict[str, Any], model_file: str, bundle: dict[str, Any]) -> dict[str, Any]:
    """The ``web`` entry of ``export.json``: sizes of the bundle as written and with each precision."""
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    total = sum(files.values())
    rest = total - files[model_file]
    sizes = {
        prec: rest + (src / name).stat().st_size
        for prec, name in (("fp32", FP32_FILE), ("int8", INT8_FILE))
        if name in meta["files"] and (src / name).is_file()
    }
    return {
        "dir": out.name,
        "precision": bundle["precision"],
        "model_file": model_file,
        "bytes": total,
        "sizes": sizes,
        "files": files,
        "versions": bundle["versions"],
    }
