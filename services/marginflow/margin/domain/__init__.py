"""Pure margin domain: health states, equity and haircuts, liquidation prices, scenario sets, account book.

No Kafka, gRPC, Prometheus or ``os.environ`` here; numpy and plain numbers, Decimal only at the money boundary.
"""
