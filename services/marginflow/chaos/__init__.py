"""Chaos harness: the whole platform under load while its parts are killed, stopped and wiped.

``python -m marginflow.chaos`` (``make chaos``) starts its own Kafka and Redis (own ports, own data
directory), the platform under the supervisor, the simulator, a demo book and a fill generator; then
injects one fault at a time and, after each, measures recovery and checks that every fill was applied
exactly once, that no margin call is contradicted and that no liquidation order is doubled or
unfounded. ``domain/`` holds the pure checks, ``application.py`` the scenario, ``adapters/`` the I/O.
"""
