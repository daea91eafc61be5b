"""User-facing errors: bad input that deserves a clear message, never a traceback."""


class FerError(Exception):
    """An error caused by the user's input (a file, a row, a field, an argument).

    The command line prints its message to stderr and exits with code 2; the dashboard shows it.
    """
