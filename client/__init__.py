"""The command-line client of a running supervisor (`caxton`)."""
