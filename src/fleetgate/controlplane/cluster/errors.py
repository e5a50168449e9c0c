"""The cluster's exceptions: one hierarchy for the replicas' coordination."""

from __future__ import annotations


__all__ = ["BusClosed", "ClusterError", "ClusterUnavailable"]


class ClusterError(Exception):
    """Base of every error of the replicas' coordination."""


class ClusterUnavailable(ClusterError):
    """The shared PostgreSQL database cannot be reached now (retried)."""


class BusClosed(ClusterError):
    """The bus was closed (shutdown): nothing more is published or received."""
