"""The HTTP bridge: the prototype's API, served over Kafka."""
