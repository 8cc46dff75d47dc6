"""User-facing errors: each names the problem so the CLI can print one line and exit non-zero."""


class H1RError(Exception):
    """Base class for errors caused by bad input (files, configs, parameters), not by bugs."""


class ConfigError(H1RError, ValueError):
    """A configuration value or file is invalid."""


class CheckpointError(H1RError):
    """A checkpoint directory is missing, malformed, truncated or does not match its config."""


class DataError(H1RError, ValueError):
    """A data file (JSONL, benchmark) is malformed."""
