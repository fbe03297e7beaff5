"""The one base class for errors a user can cause: the CLI prints these without a traceback."""


class WorldSimError(Exception):
    """Bad input, a bad file or a bad setting, with a message that names the problem."""
