"""``python -m marginflow.margin``: the margin service."""

from marginflow.margin.service import run

if __name__ == "__main__":
    run()
