"""The tests' real outages go through the same proxy as the workload's."""

from analysis.tcpproxy import TCPProxy

__all__ = ["TCPProxy"]
