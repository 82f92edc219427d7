"""A simulated IB Gateway speaking the TWS API socket protocol."""
