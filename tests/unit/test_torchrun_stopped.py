"""launch/torchrun.sh's watcher of stopped children: a stopped child asked to end (SIGTERM pending)
is let run so it ends; a stopped child nobody asked to end stays stopped."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ffpipe.backends import ray_nodes
from ffpipe.backends.torchrun_stopped import PROC, StoppedChildrenWaker, children, stopped_with_term_pending

pytestmark = pytest.mark.skipif(not PROC.is_dir(), reason="reads /proc (Linux)")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _until(done, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if done():
            return True
        time.sleep(0.02)
    return False


def test_a_stopped_child_ends_at_sigterm_and_a_paused_one_stays_stopped():
    asked, paused = _sleeper(), _sleeper()
    try:
        with StoppedChildrenWaker(poll_s=0.05) as waker:
            for proc in (asked, paused):
                proc.send_signal(signal.SIGSTOP)
                assert _until(lambda p=proc: ray_nodes.state(p.pid) == "T")
            assert {asked.pid, paused.pid} <= set(children(os.getpid()))
            assert stopped_with_term_pending(os.getpid()) == []
            asked.send_signal(signal.SIGTERM)  # pending: a stopped process cannot act on it
            assert asked.wait(timeout=10) == -signal.SIGTERM  # woken, it ended by the SIGTERM
            time.sleep(0.3)  # several polls
            assert waker.woken == [asked.pid]
            assert ray_nodes.state(paused.pid) == "T" and paused.poll() is None
    finally:
        for proc in (asked, paused):
            proc.kill()
            proc.wait()
