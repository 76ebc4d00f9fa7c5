"""I/O of the chaos harness: processes (stack scripts, supervisor, signals), Kafka, Redis, gRPC."""
