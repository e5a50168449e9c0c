"""The backhaul wire protocol: pure models and codec, no I/O."""

from agent.protocol.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    decode_agent_message,
    decode_server_message,
    encode,
    error_ref,
)
from agent.protocol.grants import Grant, GrantClaims
from agent.protocol.messages import (
    PROTOCOL_VERSION,
    AgentMessage,
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandReport,
    CommandRun,
    Confirm,
    ErrorMessage,
    Hello,
    Ping,
    Pong,
    ServerMessage,
    SudoDecided,
    Welcome,
    WorkSessionEnded,
)


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "AgentMessage",
    "CommandAcked",
    "CommandDelivered",
    "CommandFinished",
    "CommandOutput",
    "CommandReport",
    "CommandRun",
    "Confirm",
    "ErrorMessage",
    "Grant",
    "GrantClaims",
    "Hello",
    "Ping",
    "Pong",
    "ServerMessage",
    "SudoDecided",
    "Welcome",
    "WorkSessionEnded",
    "decode_agent_message",
    "decode_server_message",
    "encode",
    "error_ref",
]
