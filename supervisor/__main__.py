"""`caxton-supervisor` / `python -m caxton.supervisor`: run the Caxton supervisor.

Only gRPC's engine is chosen here, before anything imports grpc (which reads
the choice once, on import; see grpc_engine.py); the command line is cli.py.
"""

from __future__ import annotations

from . import grpc_engine


def main(argv: list[str] | None = None) -> None:
    grpc_engine.select()
    from .cli import main as run

    run(argv)


if __name__ == "__main__":
    main()
