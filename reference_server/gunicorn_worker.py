"""The gunicorn worker class: uvicorn's, with its deprecation notice silenced.

`uvicorn.workers` is deprecated in favour of the separate `uvicorn-worker` package; it still
works and spares a dependency, so we import it quietly.
"""

from __future__ import annotations

import os
import signal
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker


class Worker(UvicornWorker):  # type: ignore[misc]
    # h11 on plain asyncio: the same stack as `capplan serve --server uvicorn`.
    CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}  # noqa: RUF012

    async def callback_notify(self) -> None:
        # gunicorn's own workers leave when their master dies; uvicorn's do not check, and an
        # orphan would keep the model (and the port) forever. Drain and exit instead.
        if os.getppid() != self.ppid:
            os.kill(os.getpid(), signal.SIGTERM)
        await super().callback_notify()
