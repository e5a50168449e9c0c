"""The composition root: builds every component, owns them in one TaskGroup, stops them.

:mod:`.lifecycle` runs the daemon (and its phased shutdown); :mod:`.wiring` builds the
components and connects them.
"""

__all__: list[str] = []
