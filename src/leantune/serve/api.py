"""`leantune serve`: build the engine and the app, run uvicorn. `running()` does the same in a background
thread on a free loopback port (tests and bench/serve.py use the real server this way)."""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from pathlib import Path

from ..errors import UserError
from ..models.loading import detected_device
from .adapters import AdapterNames
from .engine import Engine
from .observe import RequestLog
from .openai_api import Server, create_app


def parse_adapter(text: str) -> tuple[str, str]:
    """'name=REFERENCE', or a bare REFERENCE served under its own text."""
    name, sep, reference = text.partition("=")
    return (name, reference) if sep and name and reference else (text, text)


def build(adapters: list[str], base: str | None = None, runs_dir: str = "runs", max_loaded: int = 8,
          max_batch: int = 16, max_queue: int = 64, api_key: str | None = None, log_requests: str | None = None,
          default_max_tokens: int = 256, device: str | None = None, quantize: str | None = None,
          say=print) -> Server:
    pairs = [parse_adapter(a) for a in adapters]
    if base is None:
        base = _base_of(pairs, runs_dir)
    if max_loaded < 1 or max_batch < 1 or max_queue < 1:
        raise UserError("--max-loaded, --max-batch and --max-queue must each be at least 1.")
    if quantize not in (None, "int4"):
        raise UserError(f"--quantize {quantize!r}: only int4 is offered (int8 under the server is not built or "
                        "measured yet; `leantune export --format int8` makes an int8 model for transformers).")
    names = AdapterNames(Path(base).name if Path(base).exists() else base, base, runs_dir)
    resolved = []
    for name, reference in pairs:  # every reference checked before the model loads
        resolved.append(names.add(name, reference))
    device = device or detected_device()[0]
    say(f"loading {base} on {device}")
    engine = Engine(base, "auto", device, max_loaded, max_batch, max_queue, quantize=quantize, say=say)
    for target in resolved[:max_loaded]:
        engine.ensure_loaded(target)
    log = RequestLog(log_requests) if log_requests else None
    return Server(engine, names, api_key, log, default_max_tokens, say=say)


def _base_of(pairs, runs_dir: str) -> str:
    """The base the first adapter was trained on (the bundled model when none is given)."""
    if not pairs:
        return "smollm2-135m"
    run, _ = AdapterNames("", "", runs_dir).locate(pairs[0][1])
    return run.config().model.base


def check_host(host: str, api_key: str | None, say=print) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not api_key:
        say(f"WARNING: listening on {host} without --api-key: anyone who can reach this port can use the model.")


def serve(server: Server, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    check_host(host, server.api_key, server.say)
    server.engine.start()
    server.say(f"serving {server.names.base_name} and {len(server.names.aliases)} adapter(s) on "
               f"http://{host}:{port}/v1 (OpenAI-compatible); Ctrl-C stops")
    try:
        uvicorn.run(create_app(server), host=host, port=port, log_level="warning")
    finally:
        server.engine.stop()
        if server.request_log:
            server.request_log.close()


@contextlib.contextmanager
def running(server: Server, host: str = "127.0.0.1"):
    """The server on a free port of `host` in a background thread; yields its base URL ('http://host:port')."""
    import uvicorn

    server.engine.start()
    config = uvicorn.Config(create_app(server), host=host, port=0, log_level="warning", lifespan="off")
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, name="leantune-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (http.started and http.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.02)
    port = http.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        http.should_exit = True
        thread.join(timeout=10)
        server.engine.stop()
        if server.request_log:
            server.request_log.close()
