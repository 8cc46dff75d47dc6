"""`h1r serve`: an OpenAI-compatible HTTP server (FastAPI/uvicorn) around one engine.

build_app(llm, ServeConfig(...)) -> the ASGI app; run_server(...) runs it with graceful SIGTERM.
"""
