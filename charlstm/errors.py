"""The one exception type that means "the user asked for something we cannot do".

Every module may raise :class:`UserError`; the CLI turns it into one line on stderr and
exit code 2, and the Python API lets it propagate. Anything else that escapes is an internal
fault (exit 1). This module imports nothing, so every other module may import it.
"""


class UserError(ValueError):
    """A mistake in the user's input: the message says what is wrong and what would work."""
