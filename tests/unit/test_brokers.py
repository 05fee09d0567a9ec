"""Pure parts of the brokers we start: KRaft cluster ids."""

from inference_allocator.brokers.apache_kafka import new_cluster_id


def test_cluster_ids_are_22_url_safe_chars_never_read_as_an_option():
    ids = [new_cluster_id() for _ in range(5000)]  # ~1 in 64 would start with "-" unchecked
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
