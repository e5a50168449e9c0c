"""Alembic's environment and the versioned revisions of the control plane's schema
(run by :func:`fleetgate.controlplane.store.migrate.upgrade`, never by a separate tool)."""
