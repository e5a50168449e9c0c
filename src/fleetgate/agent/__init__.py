"""The agent daemon: dials the control plane, runs what it is granted, reports it (root, on every server)."""

__all__: list[str] = []
