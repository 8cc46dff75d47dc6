"""Run the app with uvicorn; SIGTERM shuts down gracefully and exits 0.

On SIGTERM uvicorn stops accepting connections and waits for the open ones; the app refuses new
requests on kept-alive connections (503) and gives in-flight requests `shutdown_grace` seconds to
finish, then aborts them in the engine (streams end with finish_reason "abort", non-streamed
requests get a 503), so uvicorn's wait ends and the lifespan shutdown stops the engine thread.
"""

from __future__ import annotations

import signal

import uvicorn


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, h1r_server):
        super().__init__(config)
        self.h1r = h1r_server

    def handle_exit(self, sig, frame):
        self.h1r.begin_shutdown()
        super().handle_exit(sig, frame)


def run_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> int:
    h1r = app.state.server
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=int(h1r.config.shutdown_grace) + 10)
    server = _Uvicorn(config, h1r)
    # uvicorn re-raises a captured SIGTERM after its graceful exit; with the default handler that would
    # kill the process (exit 143) after a clean shutdown, so SIGTERM is a no-op outside uvicorn's run
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        h1r.close()
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """The app served by uvicorn in a daemon thread (tests, notebooks, benchmarks):

        with BackgroundServer(build_app(llm)) as srv:
            openai.OpenAI(base_url=srv.url + "/v1", api_key="-")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning"):
        import threading

        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level=log_level,
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="h1r-uvicorn", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
