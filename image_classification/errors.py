"""Errors that are the user's to fix: shown as one line, never as a traceback."""


class UserError(Exception):
    """Something in the config, the command line or the data that the user must fix."""


class DataError(UserError):
    """A dataset that is missing, empty or inconsistent."""


class Diverged(UserError):
    """The run trained and its loss or objective became NaN or infinite: an outcome of its settings (a sweep's
    trial with too high a learning rate), not a mistake in the config that every run would repeat."""
