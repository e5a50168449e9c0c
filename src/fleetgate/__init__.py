"""fleetgate: approval-gated access to managed Linux servers.

Four parts side by side: :mod:`fleetgate.shared` (the wire protocol and the pure helpers
both ends use), :mod:`fleetgate.agent` (the daemon on every server),
:mod:`fleetgate.controlplane` (the reference control plane) and :mod:`fleetgate.agentctl`
(the operator's command line).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
