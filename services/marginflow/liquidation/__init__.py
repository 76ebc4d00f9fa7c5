"""Liquidation service: partial, paced, reduce-only liquidation of accounts below maintenance, the insurance
fund and auto-deleveraging behind it. The pure rules live in :mod:`marginflow.liquidation.domain`."""
