"""`python -m tests.robustness`: the probe (probe.py)."""
import sys

from tests.robustness.probe import main

sys.exit(main())
