"""``charlstm serve``: a trained model behind an OpenAI-compatible HTTP API (the only package that
imports the web framework). ``engine.py`` batches the completions in flight into one step,
``requests.py`` reads and checks a request, ``app.py`` is the ASGI app, ``metrics.py`` its
Prometheus metrics, ``server.py`` runs it with uvicorn, ``playground.html`` is the page at ``/``.
"""
