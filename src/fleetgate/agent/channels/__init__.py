"""Channels: terminals, file transfers and tunnel streams, each on its own websocket.

The router (:class:`ChannelRouter`) checks each ``channel.open`` (grant, limits, the
kind's own policy), dials the channel's websocket and hands it to the kind's
:class:`ChannelService`; it owns every channel task. Kinds an idle agent does not need
are registered as :class:`LazyService`: their modules load with their first channel.
"""

from fleetgate.agent.channels.lazy import LazyService
from fleetgate.agent.channels.router import ChannelRouter, ChannelService


__all__ = ["ChannelRouter", "ChannelService", "LazyService"]
