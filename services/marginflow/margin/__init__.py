"""Margin service: continuous IM/MM, equity and health of every owned account (see README.md)."""
