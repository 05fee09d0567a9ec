"""Cluster-wide statistics of the answers, as a faust-streaming agent (``inference-allocator
stats``): tumbling windows per model and priority, each closed one published to
``<prefix>.stats``."""
