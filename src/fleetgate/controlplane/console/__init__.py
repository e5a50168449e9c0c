"""The web console: server-rendered pages over the control plane's own API functions.

Kept import-light on purpose: :mod:`fleetgate.controlplane.api.channels` imports
:mod:`.cookies`, and the pages import the API, so the routes live in :mod:`.routes`.
"""
