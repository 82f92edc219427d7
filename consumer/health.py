"""A tiny HTTP health endpoint for the container runtime.

    GET /livez   200 while the process and its broker loop run callbacks (a wedged loop fails it)
    GET /readyz  200 when connected to the gateway and pulling intents, else 503; JSON body either way
    GET /metrics the counters in the Prometheus text format (JSON when the request accepts only application/json)
    GET /metrics.json the counters as JSON

It reads only the service's status snapshot, never the IB object, which belongs to the broker loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from consumer.metrics import prometheus_text

Probe = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """The /livez, /readyz and /metrics endpoints on a daemon thread (`start`, `stop`).

    Given the probes rather than the process, so it knows nothing of the gateway or Pub/Sub: each probe returns
    (healthy, body), answered 200 or 503 with the body as JSON. `port` is the bound one (0 asks for any).
    """

    def __init__(self, host: str, port: int, live: Probe, ready: Probe, metrics: Callable[[], dict[str, Any]]) -> None:
        routes = {"/livez": live, "/readyz": ready, "/metrics.json": lambda: (True, metrics())}

        class Handler(BaseHTTPRequestHandler):
            """Answers one request from the probes above; built per server so that it closes over them."""

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                accept = self.headers.get("Accept", "")
                if path == "/metrics" and not (accept.startswith("application/json") and "text/plain" not in accept):
                    payload, content_type = prometheus_text(metrics())
                    self._send(200, payload, content_type)
                    return
                probe = routes.get("/metrics.json" if path == "/metrics" else path)
                if probe is None:
                    self.send_error(404)
                    return
                ok, body = probe()
                self._send(200 if ok else 503, json.dumps(body, default=str).encode(), "application/json")

            def _send(self, code: int, payload: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds are not news
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise OSError(
                e.errno,
                f"the health endpoint cannot listen on {host}:{port} (HEALTH_HOST, HEALTH_PORT): {e.strerror}; "
                "set HEALTH_PORT to a free port, or 0 to turn the endpoint off",
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
