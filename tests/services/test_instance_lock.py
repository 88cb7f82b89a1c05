"""One ficha with an embedded NATS server per data dir (services/instance_lock.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.instance_lock import AlreadyRunning, InstanceLock


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    first = InstanceLock(tmp_path / "var")
    first.acquire()
    with pytest.raises(AlreadyRunning, match=rf"already running on .*var \(pid {os.getpid()}\)"):
        InstanceLock(tmp_path / "var").acquire()
    first.release()
    again = InstanceLock(tmp_path / "var")
    again.acquire()
    again.release()


def test_a_holder_that_dies_without_cleaning_up_leaves_no_lock(tmp_path: Path) -> None:
    # A kill -9: the process exits holding the lock and never releases it.
    holder = ("import os, sys; from pathlib import Path; "
              "from services.instance_lock import InstanceLock; "
              "InstanceLock(Path(sys.argv[1])).acquire(); os._exit(9)")
    done = subprocess.run([sys.executable, "-c", holder, str(tmp_path / "var")], check=False)
    assert done.returncode == 9
    assert (tmp_path / "var" / "ficha.lock").exists()  # the file stays, the lock does not
    lock = InstanceLock(tmp_path / "var")
    lock.acquire()
    lock.release()
