"""HTTP routers of the control-plane API (docs/api.md)."""
