"""Replicas: several control-plane processes on one PostgreSQL database (docs/replicas.md).

``notes`` (what replicas tell each other, pure), ``bus`` (LISTEN/NOTIFY), ``tables``
(their shared tables), ``node`` (this replica: links, frames, mirror, heartbeat),
``remote`` (an agent linked elsewhere), ``leader`` (one replica runs the periodic duties),
``hop`` (a channel's agent side relayed between replicas), ``bridge`` and ``runtime``
(how the hub and the application use them).
"""
