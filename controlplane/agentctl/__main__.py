"""`python -m controlplane.agentctl` runs the CLI."""

from __future__ import annotations

import sys

from controlplane.agentctl.main import main


sys.exit(main())
