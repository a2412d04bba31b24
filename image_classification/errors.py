"""Errors that are the user's to fix: shown as one line, never as a traceback."""


class UserError(Exception):
    """Something in the config, the command line or the data that the user must fix."""


class DataError(UserError):
    """A dataset that is missing, empty or inconsistent."""
