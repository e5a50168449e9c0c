"""Reference control plane: Commands API, agent hub, and the agentctl client."""
