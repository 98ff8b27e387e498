"""UserError: a mistake the user can fix. The CLI prints it as one line ("error: ...") and exits 2;
every other exception is a bug in gptlab and keeps its traceback."""


class UserError(Exception):
    """A mistake in the user's input: the message names the problem and the fix."""

    exit_code = 2
