"""``python -m marginflow.marketdata [--replay FILE] [--speed max|N] [--universe FILE] [--seed N] [--exit-at-end]``."""

import sys

from marginflow.marketdata.settings import apply_command_line

if __name__ == "__main__":
    apply_command_line(sys.argv[1:])
    from marginflow.marketdata.service import run

    run()
