"""I/O of the margin service: protobuf codec, Kafka, gRPC, Prometheus."""
