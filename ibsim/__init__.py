"""A simulated IB Gateway speaking the TWS API socket protocol, for ib_insync clients in tests and local runs."""

from .scenario import Scenario, ScenarioError
from .server import GatewayServer
from .threaded import ThreadedGateway

__all__ = ["GatewayServer", "Scenario", "ScenarioError", "ThreadedGateway"]
