"""The example agents, shipped as package data: `caxton-supervisor
--deploy-examples` deploys each `agents/NAME.wat` as agent NAME."""

from importlib.resources import files
from importlib.resources.abc import Traversable


def agents() -> list[Traversable]:
    """The example agents' WAT files, sorted by name."""
    return sorted((f for f in files(__name__).joinpath("agents").iterdir() if f.name.endswith(".wat")),
                  key=lambda f: f.name)
