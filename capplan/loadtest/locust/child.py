"""The Locust child process's entry point: `python -m capplan.loadtest.locust.child ROLE ...`.

Importing Locust monkey-patches the process for gevent, so only this child imports
`locust.process`; argument parsing happens first, on plain stdlib.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capplan.loadtest.locust.engine import CONNECT_TIMEOUT_S, DEFAULT_MASTER_PORT
from capplan.loadtest.locust.job import LocustJob


def _child_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m capplan.loadtest.locust.child",
        description="capplan's Locust process (started by `capplan loadtest --engine locust`).",
    )
    roles = parser.add_subparsers(dest="role", required=True)
    for role in ("local", "master"):
        sub = roles.add_parser(role)
        sub.add_argument("--job", required=True, type=Path)
        sub.add_argument("--records", required=True, type=Path)
        sub.add_argument("--report", required=True, type=Path)
        sub.add_argument("--ui-port", type=int, default=None)
        if role == "master":
            sub.add_argument("--expect-workers", type=int, required=True)
            sub.add_argument("--bind", default="127.0.0.1")
            sub.add_argument("--port", type=int, default=DEFAULT_MASTER_PORT)
            sub.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S)
    worker = roles.add_parser("worker")
    worker.add_argument("--master", required=True)
    worker.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT)
    return parser


def child_main(argv: list[str] | None = None) -> int:
    args = _child_parser().parse_args(argv)
    # Importing locust monkey-patches this process for gevent: only ever in this child.
    from capplan.loadtest.locust import process as lp

    lp.configure_logging()
    if args.role == "worker":
        lp.run_worker(args.master, args.master_port)
        return 0
    job = LocustJob.load(args.job)
    if args.role == "local":
        report = lp.run_local(job, args.records, ui_port=args.ui_port)
    else:
        report = lp.run_master(
            job,
            args.records,
            expect_workers=args.expect_workers,
            bind_host=args.bind,
            port=args.port,
            connect_timeout_s=args.connect_timeout,
            ui_port=args.ui_port,
        )
    lp.write_report(report, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
