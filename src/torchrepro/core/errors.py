"""Errors a user can fix. Entry points print them as one line and exit with status 2."""


class UserError(Exception):
    """A mistake in params, data or the environment that the user can fix."""


class ParamsError(UserError):
    """params.yaml is malformed: names the key path and what is allowed."""


class DataError(UserError):
    """A data file is missing, corrupt or does not match what was expected."""
