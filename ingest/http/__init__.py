"""The HTTP gateway: a service of its own on top of the publisher library (`facestream.ingest`).

`app.py` builds the FastAPI application and `serve.py` runs it on uvicorn
(`facestream ingest serve`, `python -m facestream.ingest`); the routes, the gateway's own
answers from the cache (`cache_answers.py`), the waits it shares (`shared_waits.py`), the reply
reader (`reply_router.py`) and the request checks live beside them. Nothing in the publisher
library imports this package (import-linter, pyproject.toml).
"""
