"""The one base class of the errors that are the user's to fix."""


class UserError(Exception):
    """Bad input, or a state on disk, that the user fixes: a config value, a missing or damaged file, a run
    directory in use, a run that diverged. The message names the problem and the fix; the entry points
    print it alone, in one line, without a traceback."""
