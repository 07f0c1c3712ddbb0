"""ONNX export of trained prompt generators and a torch-free edge runtime.

* :mod:`export.export`  – ``PromptedModel``/checkpoint → ``prompt_generator.onnx`` (+ int8) and ``export.json``;
* :mod:`export.parity`  – the fp32/int8 parity checks recorded at export time;
* :mod:`export.runtime` – ``PromptRuntime``: text → Z with tokenizers + onnxruntime + numpy only;
* :mod:`export.host`    – the model host: ``[Z ; x]`` through the frozen model (torch);
* :mod:`export.cli`     – the ``lopa-fed export`` and ``lopa-fed infer`` subcommands.

This package ``__init__`` imports nothing, so ``import export.runtime`` stays free of torch.
"""
