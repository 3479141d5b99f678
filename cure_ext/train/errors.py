"""Errors caused by the user's input (options, data files, checkpoints): the command-line tools print their
message as one paragraph and exit non-zero, without a traceback."""


class UserError(Exception):
    """Base of the errors the command-line tools report without a traceback."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An invalid option or combination of options."""


class DataError(UserError):
    """Missing or unreadable data; the message names the file and what was expected."""


class CheckpointError(UserError):
    """A missing, corrupt or mismatched checkpoint."""


class DivergedError(UserError):
    """A non-finite loss or gradient stopped training (the message names the epoch and step)."""

    exit_code = 3
