"""Errors caused by the user's input (options, data files, checkpoints): the command-line tools print their
message as one paragraph and exit non-zero, without a traceback."""


class UserError(Exception):
    """Base of the errors the command-line tools report without a traceback."""

    exit_code = 2
    shared = False  # under torchrun: met by every rank alike, so reported by rank 0 alone (distributed.py)


class PeerError(UserError):
    """Under torchrun: another process failed (it reports its own error), so this one stops too."""


class ConfigError(UserError, ValueError):
    """An invalid option or combination of options."""

    shared = True  # every rank has the same options


class DataError(UserError):
    """Missing or unreadable data; the message names the file and what was expected."""


class CheckpointError(UserError):
    """A missing, corrupt or mismatched checkpoint."""

    shared = True  # rank 0 reads checkpoints; every rank checks the one it broadcast alike


class DivergedError(UserError):
    """A non-finite loss or gradient stopped training (the message names the epoch and step)."""

    exit_code = 3
    shared = True  # the finiteness verdict is every rank's
