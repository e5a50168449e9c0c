"""Work sessions: the pure lifecycle state machine and the pure gate check.

Storage lives in :mod:`fleetgate.controlplane.store.worksessions`, the HTTP API in
:mod:`fleetgate.controlplane.api.worksessions`; nothing in this package does I/O.
"""
