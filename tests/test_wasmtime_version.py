"""worker/wasmtime_version.py reads the version pip installed, as
importlib.metadata does, without importing it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from caxton.worker.wasmtime_version import installed_version


def test_the_installed_version_is_the_one_importlib_metadata_reads():
    assert installed_version() == metadata.version("wasmtime")


def test_reading_it_imports_no_importlib_metadata():
    code = ("import sys; from caxton.worker.wasmtime_version import installed_version; v = installed_version(); "
            "print(v, 'importlib.metadata' in sys.modules, 'email' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == [metadata.version("wasmtime"), "False", "False"]
