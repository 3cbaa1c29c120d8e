"""Runs an experiment config; the same as the `kpool` command.

KERAS_BACKEND=jax python experiments/run.py run configs/quickstart.yaml
python experiments/run.py report results/quickstart
"""

import sys

from kpool.harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
