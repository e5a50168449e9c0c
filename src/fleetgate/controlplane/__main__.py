"""``python -m fleetgate.controlplane``."""

from fleetgate.controlplane.cli import main


raise SystemExit(main())
