"""I/O of riskparams: protobuf codecs, the faust app and its table, Kafka publishing, gRPC, metrics."""
