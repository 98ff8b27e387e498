"""One kind of error for things the user can fix.

Anything raised as UserError is printed by the CLI as a single line
("error: ...") and the process exits with code 2. Every other exception is a
bug in gptlab and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input: the message names the problem and the fix."""

    exit_code = 2
