"""``python -m marginflow.cli`` = the ``marginflow`` console script."""

from marginflow.cli import main

main()
