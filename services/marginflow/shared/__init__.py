"""What every marginflow service shares: settings, Kafka, Redis, gRPC server, metrics, logs, lifecycle."""
