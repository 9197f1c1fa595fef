"""The agent's error hierarchy: each error says what failed, where, and how to fix it."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose; carries the CLI exit code."""

    exit_code = 1


class ConfigError(AgentError):
    """The configuration file or dict is invalid."""

    exit_code = 2


class ModelError(AgentError):
    """The model file or the TFLite interpreter cannot be loaded or run."""

    exit_code = 3


class SourceError(AgentError):
    """The frame source cannot be opened or has failed."""

    exit_code = 4


class StoreError(AgentError):
    """The SQLite history cannot be opened or written."""

    exit_code = 5


class BaselineError(AgentError):
    """A reference baseline is missing, corrupt or made for another model."""

    exit_code = 6


class CommandError(AgentError):
    """A run-time command (CLI or MQTT) is malformed or names something unknown."""

    exit_code = 7


class UsageError(AgentError):
    """The command line is wrong (a missing or conflicting option): exit 2, like argparse."""

    exit_code = 2
