"""`python emulated_server_main.py TTFT_MS TPOT_MS [key=value ...]`: prints its URL, serves."""

from __future__ import annotations

import sys

import uvicorn

from reference_server.app import create_app
from reference_server.config import ServerConfig
from reference_server.emulated import EmulatedBackend, EmulatedTiming
from reference_server.testing import bind_socket


def main() -> None:
    ttft_ms, tpot_ms = float(sys.argv[1]), float(sys.argv[2])
    settings = dict(arg.split("=", 1) for arg in sys.argv[3:])
    tokens_per_chunk = int(settings.pop("tokens_per_chunk", 1))
    config = ServerConfig(
        backend="emulated",
        max_concurrent=int(settings.get("max_concurrent", 256)),
        queue_size=int(settings.get("queue_size", 256)),
    )
    backend = EmulatedBackend(
        EmulatedTiming(ttft_ms=ttft_ms, tpot_ms=tpot_ms), tokens_per_chunk=tokens_per_chunk
    )
    sock = bind_socket("127.0.0.1", 0)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(create_app(config, backend), log_level="warning", access_log=False)
    )
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
