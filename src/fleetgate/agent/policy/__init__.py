"""Local enforcement: decisions the agent takes itself, whatever the control plane says.

Pure: no I/O. :mod:`fleetgate.agent.policy.grants` verifies the signed grant of a gated command.
"""

from fleetgate.agent.policy.grants import (
    GrantPolicy,
    GrantRefused,
    PublicKey,
    load_public_key,
    verify_grant,
)


__all__ = ["GrantPolicy", "GrantRefused", "PublicKey", "load_public_key", "verify_grant"]
