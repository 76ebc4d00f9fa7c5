"""``python -m marginflow.riskparams`` (``--help`` lists the settings)."""

import sys

from marginflow.riskparams.settings import print_help

if __name__ == "__main__":
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        raise SystemExit(print_help())
    from marginflow.riskparams.service import run

    run()
