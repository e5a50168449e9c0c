"""``python -m fleetgate.agent``."""

import sys

from fleetgate.agent.cli import main


sys.exit(main())
