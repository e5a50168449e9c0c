"""TCP tunnels: each channel of kind ``tunnel`` is one TCP connection to this server's
loopback. ``policy`` decides (pure), ``pump`` moves bytes, ``service`` ties them to the
channel router."""
