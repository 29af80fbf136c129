"""The chatbot as a service (`raft-assets serve`): an OpenAI-compatible RAG endpoint and its web page.

`app.py` (routes, auth, limits, the log), `protocol.py` (the OpenAI wire format and validation), `service.py`
(retrieval, the context budget, the answer), `generators.py` (an endpoint: vLLM or any URL), `batching.py` (the
checkpoint in process, batched across requests), `admission.py` (bounded slots and queue), `sources.py` (which
document each quote came from), `server.py` (uvicorn), `page.html` (the chat page).
"""
