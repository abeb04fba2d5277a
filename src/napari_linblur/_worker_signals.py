"""Preloaded into the worker processes of the local cluster that ``linblur … --workers N`` starts.

Ctrl-C in a terminal sends SIGINT to every process of the foreground group: the command itself stops the run and
closes its cluster (which ends the workers), so the workers ignore SIGINT rather than each print a
``KeyboardInterrupt`` traceback over the command's one-line "interrupted".
"""

from __future__ import annotations

import signal
import threading


def dask_setup(worker) -> None:  # noqa: ARG001 - distributed's preload hook
    """Called by distributed in the worker process once the worker is set up."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
