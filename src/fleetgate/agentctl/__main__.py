"""`python -m fleetgate.agentctl` runs the CLI."""

from __future__ import annotations

import sys

from fleetgate.agentctl.entry import main


sys.exit(main())
