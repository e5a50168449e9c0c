"""What both ends of the wire share: the protocol, grants format, framing, pure checks, the stream pump.

The agent, the control plane and agentctl import this part, and nothing else of each other.
"""

__all__: list[str] = []
