"""Test-only fault injection: crash or stall volseg at a named point of a write.

Does nothing unless the environment variable ``VOLSEG_TEST_FAULT`` is set, which only the tests do
(tests/test_hostile.py).  Its value is ``POINT[:FILE]:ACTION``:

* POINT: ``mid-write`` (a temporary file is written, not yet committed), ``before-commit`` (every
  output of a job is written to temporary files, none renamed), ``before-rename`` (just before the
  rename of FILE into place);
* FILE (optional): the output's file name the fault applies to;
* ACTION: ``kill`` (SIGKILL this process), ``sleep=SECONDS``, or ``wait=PATH`` (until PATH exists).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "VOLSEG_TEST_FAULT"


def fault_point(point: str, path: str | Path | None = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    parts = spec.split(":")
    where, target, action = parts[0], parts[1] if len(parts) == 3 else None, parts[-1]
    if where != point or (target is not None and (path is None or Path(path).name != target)):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep="):
        time.sleep(float(action[len("sleep="):]))
    elif action.startswith("wait="):
        deadline = time.monotonic() + 120
        while not Path(action[len("wait="):]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
