"""Programs outside Python that some tests drive (Chromium, Node.js): found, or the test
skips loudly, and fails instead in CI (``CI=true``), where a skip would hide a gap."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest


def missing(what: str, reason: str) -> NoReturn:
    """Skip the test with a reason no one can miss; in CI, fail it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(f"SKIPPING {what}: {reason}")


def chromium_or_skip() -> str:
    """Debian's Chromium, for the dashboard's browser test."""
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        missing("THE BROWSER TEST", "Chromium is not installed: `apt-get install chromium` "
                "(Debian's package) to run the dashboard's browser test")
    return found


NODE_MAJOR = 20


@functools.cache  # a skip or failure raises, and so is not cached
def node_or_skip() -> str:
    """Node.js 20 or newer, for the producer written in another language."""
    found = shutil.which("node")
    if found is None:
        missing("THE NODE.JS PRODUCER TEST", f"Node.js is not installed: install Node.js "
                f"{NODE_MAJOR} or newer (`apt-get install nodejs`) to run the test of a "
                "producer written from the README in another language")
    version = subprocess.run([found, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    major = version.lstrip("v").split(".")[0]
    if not (major.isdigit() and int(major) >= NODE_MAJOR):
        missing("THE NODE.JS PRODUCER TEST", f"{found} is Node.js {version or '(unknown)'}; "
                f"the producer example needs Node.js {NODE_MAJOR} or newer")
    return found
