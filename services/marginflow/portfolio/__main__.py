"""``python -m marginflow.portfolio``: the portfolio aggregation service."""

from marginflow.portfolio.entrypoint import run

if __name__ == "__main__":
    run()
