"""`python -m caxton`: the command-line client (see caxton.client.cli)."""

from caxton.client.cli import main

main()
