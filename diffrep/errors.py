"""One exception type for every user mistake, so the CLI can print it without a traceback."""


class DiffrepError(Exception):
    """A problem with the user's input (model, data, arguments, files); the message says what and how to fix it."""
