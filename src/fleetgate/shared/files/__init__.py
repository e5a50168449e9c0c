"""File transfer pieces both ends use: path rules, frame format, request bookkeeping, tar member checks."""

__all__: list[str] = []
