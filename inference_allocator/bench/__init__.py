"""``inference-allocator bench``: the real stack measured against an in-process allocator."""
