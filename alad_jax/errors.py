"""The one error type users see.

Anything the user can fix (a missing file, a malformed line, a wrong config key,
an unsupported checkpoint) is raised as :class:`AladError` with a single-line
message that says what is wrong, where, and how to fix it. The command line
prints that line and exits non-zero; it never shows a traceback for these.
"""


class AladError(Exception):
    """A user-facing error whose message is one line: what, where, how to fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
