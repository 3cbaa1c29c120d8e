import os
import sys

# The benchmark scripts import their helpers as `bench`, from their own
# directory (`python experiments/bench_layers.py`); the tests do the same.
EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments")
sys.path.insert(0, os.path.abspath(EXPERIMENTS))
