"""Everything ib_insync, behind one door (`broker.Broker`): the loop thread, the connection, orders, market data."""
