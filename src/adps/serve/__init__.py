"""``adps serve``: an HTTP inference service (FastAPI on uvicorn, the ``adps[serve]`` extra)."""
