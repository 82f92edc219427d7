"""Pub/Sub intent consumer that trades through Interactive Brokers."""
