"""The installed wasmtime-py's version, as its wheel recorded it.

importlib.metadata would read it as well, but importing it brings in email,
zipfile, csv and some thirty more modules: into the fork server, whose
memory every worker maps and partly writes, and into every worker started
by exec. Read here from the name of the package's dist-info directory
instead. Measured against importlib.metadata (30 idle echo agents, three
pairs): forked workers' PSS 6.17-6.18 MiB against 6.26-6.33, USS 5.12-5.14
against 5.13-5.20; importing the worker's modules 0.10 s against 0.11.
importlib.metadata is still asked where that directory is not found exactly
once (an unusual install).
"""

from __future__ import annotations

from pathlib import Path

import wasmtime

_PREFIX = "wasmtime-"
_SUFFIX = ".dist-info"


def installed_version() -> str:
    site = Path(wasmtime.__file__).resolve().parent.parent
    found = list(site.glob(f"{_PREFIX}*{_SUFFIX}"))
    if len(found) == 1:
        return found[0].name[len(_PREFIX):-len(_SUFFIX)]
    from importlib import metadata

    return metadata.version("wasmtime")
