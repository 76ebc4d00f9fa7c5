"""``python -m marginflow.liquidation``: the liquidation service."""

from marginflow.liquidation.service import run

if __name__ == "__main__":
    run()
