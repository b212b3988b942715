"""The exception for bad input: the scripts print its one-line message and exit with status 2."""


class UserError(Exception):
    """A problem the user can fix (a path, a flag, a file); the message names the problem and the fix."""
