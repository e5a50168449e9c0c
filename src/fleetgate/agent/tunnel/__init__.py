"""TCP tunnels: each channel of kind ``tunnel`` is one TCP connection to this server's
loopback. ``policy`` decides (pure), ``pump`` moves bytes, ``service`` ties them to the
channel router.

Nothing is re-exported here on purpose: ``agentctl`` imports ``fleetgate.shared.pump``
alone, without the service and the agent's websocket layer behind it.
"""

__all__: list[str] = []
