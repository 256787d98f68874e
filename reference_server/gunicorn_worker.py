"""The gunicorn worker class: uvicorn's, with this server's limits and drain, and its
deprecation notice silenced.

`uvicorn.workers` is deprecated in favour of the separate `uvicorn-worker` package; it still
works and spares a dependency, so we import it quietly.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

from reference_server.serving import (
    DRAIN_INCOMPLETE_EXIT,
    DrainingServer,
    configure,
    report_drain_cut,
    shutdown_timeout_s,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker


class Worker(UvicornWorker):  # type: ignore[misc]
    # h11 on plain asyncio: the same stack as `capplan serve --server uvicorn`.
    CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}  # noqa: RUF012

    async def _serve(self) -> None:
        # uvicorn's own _serve, with the guarded protocol, proxy trust and drain of serving.py.
        self.config.app = self.wsgi
        configure(self.config, self.wsgi)
        self.config.timeout_graceful_shutdown = shutdown_timeout_s(self.wsgi.state.server.config)
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            from gunicorn.arbiter import Arbiter

            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if server.drain_incomplete():
            report_drain_cut()
            sys.exit(DRAIN_INCOMPLETE_EXIT)

    async def callback_notify(self) -> None:
        # gunicorn's own workers leave when their master dies; uvicorn's do not check, and an
        # orphan would keep the model (and the port) forever. Drain and exit instead.
        if os.getppid() != self.ppid:
            os.kill(os.getpid(), signal.SIGTERM)
        await super().callback_notify()
