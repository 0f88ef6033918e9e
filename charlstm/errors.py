"""The one exception type that means "the user asked for something we cannot do".

Every module may raise :class:`UserError`; the CLI turns it into one line on stderr and
exit code 2. Anything else that escapes is an internal fault (exit 1). This module imports
nothing, so it sits below ``config`` and ``corpus`` without breaking their rule of importing
nothing else of ours.
"""


class UserError(Exception):
    """A mistake in the user's input: the message says what is wrong and what would work."""
