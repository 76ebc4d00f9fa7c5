"""riskparams: live volatility, correlation and scenario sets for margin.

Layers: :mod:`.domain` (pure numpy maths), :mod:`.application` (the engine, ports as arguments),
:mod:`.adapters` (faust app and tables, Kafka codecs, gRPC, Prometheus), :mod:`.__main__` (wiring).
"""
