"""Everything ib_insync: the broker loop thread, the gateway connection, orders and market data."""
