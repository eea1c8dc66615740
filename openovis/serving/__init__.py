"""Serving: an OpenAI-compatible HTTP server (FastAPI + uvicorn) and a small web chat page.

    openovis serve MODEL_DIR [--port 8000] [--image-root DIR] [--compile]

``create_app`` (:mod:`openovis.serving.app`) builds the application from an :class:`Engine`
(:mod:`openovis.serving.engine`), which owns the model and generates one answer at a time.
"""
