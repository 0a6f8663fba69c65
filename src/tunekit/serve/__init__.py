"""tunekit.serve: an OpenAI-compatible API for fine-tuned runs, with grounding, guardrails and monitoring.

    from tunekit.serve.state import build_state
    from tunekit.serve.server import serve_in_thread

    state = build_state("runs/demo", adapters=[("other", Path("runs/other"))])  # load, check, preflight
    with serve_in_thread(state) as server:                                      # uvicorn on a free port
        openai.OpenAI(base_url=server.base_url, api_key="...").chat.completions.create(model="demo", ...)
    state.close()

One concern per module: `loading` (base model + adapters, refused when base or template differ),
`backend` (the batched Generator), `preflight` (answers as `tunekit eval` recorded), `jobs` (request ->
checked job), `structured` (response_format -> decoding constraint), `pipeline` (guardrails, grounding,
generation, n choices), `responses` (OpenAI shapes, SSE), `logprobs`, `embeddings` (/v1/embeddings), `app`
(routes), `middleware` (keys, rate limits, metrics, error log), `auth`, `limits`, `metrics`, `errors`,
`schemas` (request bodies), `replies` (response bodies), `state` (everything one server holds) and `server`
(uvicorn, foreground or in a thread).
"""
