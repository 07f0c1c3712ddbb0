"""``lopa-fed serve``: the model host as an HTTP service.

One frozen model, loaded once, serves every user: each request carries its own soft
prompt Z (computed on the device), concurrent requests from different users go through
one forward pass together (:mod:`.batching`), and the host keeps nothing per user.

* :mod:`.codec` – Z on the wire (base64 little-endian float32, or a nested list) and its checks;
* :mod:`.batching` – cross-user micro-batching;
* :mod:`.app` – the ASGI application (FastAPI on uvicorn): endpoints, limits, errors;
* :mod:`.client` – what a device calls (``lopa-fed infer --host URL``);
* :mod:`.cli` – the ``serve`` subcommand.
"""
