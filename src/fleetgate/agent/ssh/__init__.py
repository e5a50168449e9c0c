"""SSH access through ``ssh`` channels: an in-process asyncssh server per channel.

Only :mod:`fleetgate.agent.ssh.hostkey` and :mod:`fleetgate.agent.ssh.service` are imported
at start; asyncssh itself is imported when the first ``ssh`` channel opens, so an agent
that never serves SSH does not pay for it in memory.
"""

__all__: list[str] = []
