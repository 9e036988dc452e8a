"""`ship` with the tests' tiny model configs registered, for tests that start it in new processes
(`python -m tests.tiny_ship ...`, `torchrun ... -m tests.tiny_ship ...`); spawned ranks import it again as their
main module, so they know the configs too."""

from __future__ import annotations

import tests.conftest  # noqa: F401  (registers tests/model_configs with open_clip)
from stages.cli import app

if __name__ == "__main__":
    app()
