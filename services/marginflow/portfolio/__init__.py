"""Portfolio aggregation: accounts, positions and collateral from Kafka, state in Redis, AccountService over gRPC.

Layers: :mod:`.domain` (pure position and collateral arithmetic), :mod:`.application` (applies
batches and admin requests through ports), :mod:`.adapters` (Kafka, Redis, gRPC, metrics, wire
codec) and :mod:`.service` (the one place that wires them; ``python -m marginflow.portfolio``).
"""
