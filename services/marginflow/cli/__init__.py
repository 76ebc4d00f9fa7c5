"""``marginflow``: the operator command line (typer commands, rich tables, ``--json`` for scripts)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from marginflow.cli.app import main as run

    run(argv)


__all__ = ["main"]
