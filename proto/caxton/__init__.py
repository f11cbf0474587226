"""Caxton: a secure WebAssembly runtime for multi-agent systems.

`caxton.supervisor` runs the public API and owns all state; `caxton.worker`
is one sandboxed worker process; `caxton.client` is the command-line client;
`caxton.v1` and `caxton.internal.v1` are generated from `proto/` by
`make proto`; `caxton.contract` holds what server and clients agree on.
"""

__version__ = "0.2.0"
