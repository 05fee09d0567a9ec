"""The worker agent: priority dispatch onto leased GPU slots, inference backends, commits."""
