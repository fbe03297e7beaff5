"""The one base class for errors a user can cause: the CLI prints these without a traceback."""


class WorldSimError(Exception):
    """Bad input, a bad file or a bad setting, with a message that names the problem."""


class SettingError(WorldSimError, ValueError):
    """A bad runtime setting (chunks, temperature, guidance ...): a ``ValueError`` to the API,
    as the runtime documents, and a one-line error to the CLI."""
