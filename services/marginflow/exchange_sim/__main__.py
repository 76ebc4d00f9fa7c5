"""``python -m marginflow.exchange_sim``: the exchange simulator (demo and tests)."""

from marginflow.exchange_sim.service import run

if __name__ == "__main__":
    run()
