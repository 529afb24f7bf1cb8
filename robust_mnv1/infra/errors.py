"""One exception type for every mistake a user can make.

The CLI entry points catch :class:`UserError` and print its message as a single line on
stderr, then exit non-zero, so a bad alpha, a missing dataset or a corrupt checkpoint never
shows a traceback. Anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user: the message must be one line and say how to fix it."""
