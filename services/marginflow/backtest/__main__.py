"""``python -m marginflow.backtest``: the margin backtest and calibration report (see service.py)."""

import sys

from marginflow.backtest.service import run

sys.exit(run())
