"""Processes the service starts that must not outlive it: each worker of ``HSN_WORKERS`` > 1
(``app.main.create_app_from_environment``) and a segment build (``app/segments.py``).

uvicorn's supervisor stops its workers when it is told to stop, but a supervisor killed outright
(``kill -9``, the kernel's out-of-memory killer) left them running: still serving the port, each
holding its model and index (about 390 MB apiece in the test suite, two per killed server)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the process that started it ends (Linux
    ``PR_SET_PDEATHSIG``); a parent that ended before this call ends this one now. A no-op off
    Linux, or in a process not started by ``multiprocessing``."""
    parent = multiprocessing.parent_process()
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent.pid:  # it ended before prctl took hold
        os._exit(1)
