"""``python -m marginflow.portfolio``: the portfolio aggregation service."""

from marginflow.portfolio.service import run

if __name__ == "__main__":
    run()
