"""The reference control plane: the Commands and work-session APIs, the agent hub, the relays."""
