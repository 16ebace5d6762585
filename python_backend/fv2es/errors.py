"""Errors that mean "the request is wrong", as opposed to a bug or a server fault.

Python-backend models turn an `InputError` into a Triton INVALID_ARG response whose message is
the exception text, so it must say what is wrong with the input in words a user can act on, in
one short line (no traceback, no server path). `fv2es.checks` raises it for inputs that fail
validation; any other exception reaches the client only as "<model>: internal error".
"""


class InputError(ValueError):
    """The request's input cannot be processed (not a video, too long, too large, ...)."""
