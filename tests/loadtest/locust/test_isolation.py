"""Locust monkey-patches whatever imports it: the capplan process must never import it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from capplan.errors import InputError
from capplan.loadtest.locust.engine import LocustOptions

CHECK = """
import sys
import capplan.cli
import capplan.loadtest.locust.engine
import capplan.loadtest.locust.job
import capplan.loadtest.locust.launch
from capplan.loadtest.locust.engine import LocustOptions, build_jobs, run_locust
leaked = sorted(m for m in ("locust", "gevent", "geventhttpclient") if m in sys.modules)
print(",".join(leaked))
"""


def test_the_capplan_side_of_the_locust_engine_imports_neither_locust_nor_gevent() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_bad_worker_counts_are_input_errors() -> None:
    with pytest.raises(InputError, match="locust-workers"):
        LocustOptions(workers=-1)
    with pytest.raises(InputError, match="master-port"):
        LocustOptions(workers=1, master_port=70000)
