"""File transfer: the files channel service and its per-transfer worker (as the user)."""

__all__: list[str] = []
