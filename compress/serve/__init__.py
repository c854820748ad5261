"""The device server: times deployable models on the target device for a search running elsewhere.

``python -m compress.serve`` (or ``compress device serve``) runs on the target. It needs Starlette, uvicorn,
pydantic, numpy and ONNX Runtime (PyTorch only for the ``torch`` runtime); nothing here imports the search,
training or pruning code. Layout:

    token.py        the shared secret: generated on first start, stored 0600, compared in constant time
    fingerprint.py  what the device is: CPU model, cores, runtime versions, governor
    protocol.py     the records exchanged with the client (request and answer schemas)
    child.py        one measurement in a child process, with the project's timing functions
    app.py          the HTTP app: authentication, bounded uploads, one measurement at a time, result cache
    server.py       binding, TLS, the ready line, the command-line entry
"""
