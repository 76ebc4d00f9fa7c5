"""Exchange simulator (demo and tests only): fills liquidation orders against a simulated book and emits the
fills. The pure matching lives in :mod:`marginflow.exchange_sim.domain`."""
