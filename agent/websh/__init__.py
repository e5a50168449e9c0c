"""Interactive terminals (websh): a login shell on a PTY per channel, recorded."""
