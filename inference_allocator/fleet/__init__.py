"""The fleet: pools of slots declared in a TOML file, their backends (mock, any
OpenAI-compatible server) and the health of the servers behind them."""
