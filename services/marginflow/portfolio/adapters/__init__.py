"""I/O adapters of the portfolio service: wire codec, Kafka, Redis, gRPC, Prometheus."""
