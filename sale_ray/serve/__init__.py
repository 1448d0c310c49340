"""The online endpoint: an OpenAI-compatible Ray Serve app that explains every answer.

    wire.py        pydantic request / response bodies (strict: unknown fields are 422s)
    gateway.py     the logic (plain class): auctions, passthrough, streams, tasks, records
    explain.py     why an agent answered and what it cost: the ``sale`` field, x-sale-* headers
    app.py         the FastAPI app: auth, body cap, deadlines, disconnects, SSE framing
    errors.py      errors, and ``to_http``: the one place an exception becomes a status
    auth.py        bearer API keys from an env var or a file (digests only, constant time)
    metrics.py     Prometheus text: requests, latency, spend per agent, winner share
    store.py       the bounded window of recent auction records
    handles.py     how the gateway reaches agents: in-process, or Ray actors (cancellable)
    deployment.py  the thin Serve deployment and ``serve run`` builder
    cli.py         ``sale-ray serve``, ``sale-ray serve-llm``
    llm_pool.py    the pool's models as OpenAI-compatible Serve deployments (``/llm/<name>/v1``)
    llm_proxy.py   one such route's app: requests forwarded to llama.cpp, usage counted

See docs/serve.md and docs/serve_llm.md.
"""
