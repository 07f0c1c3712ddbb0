"""ONNX export of trained prompt generators and a torch-free edge runtime.

One module per stage of an export (``lopa-fed export``)::

    graph.py        the exported torch module: token ids + mask → encoder → pooling → heads → gate → Z
    onnx_export.py  torch.onnx.export (dynamo) + onnx.checker; the opset range
    quantize.py     the int8 copy (onnxruntime.quantization, per channel, balanced/full)
    quantize_static.py  static QDQ int8 calibrated on real train text (--int8-mode static)
    web_bundle.py   web/: the browser bundle (onnxruntime-web + transformers.js tokenizer, no CDN)
    web_browser.py  a 127.0.0.1 static server + headless Chromium via puppeteer-core (tests, bench)
    web/            lopa-prompt.js, index.html, driver.mjs, package.json + lockfile (npm ci → node_modules)
    sidecar.py      export.json: identity, tokenizer, hashes, sizes, versions; the CLI summary
    parity.py       fp32/int8 Z parity and tie-aware prediction agreement against PyTorch
    pipeline.py     export_model / export_checkpoint / export_run: stage a directory, check, swap it in
    federated.py    one client of a federated run: run.json settings + global/ + private/ → PromptedModel

and on the device and the host (``lopa-fed infer``)::

    runtime.py      PromptRuntime: text → Z with tokenizers + onnxruntime + numpy only (no torch)
    host.py         ModelHost: the frozen model on [Z ; x], nothing stored per user
    serve/          ``lopa-fed serve``: the model host over HTTP (FastAPI on uvicorn), cross-user batching
    cli.py          the ``export`` and ``infer`` subcommands
    errors.py       ExportError (runtime.py has its own ExportFormatError)

This package ``__init__`` imports nothing, so ``import export.runtime`` stays free of torch.
"""
