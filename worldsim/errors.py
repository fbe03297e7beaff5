"""The one base class for errors a user can cause (the CLI prints these without a traceback),
and the field check the config readers share."""

from collections.abc import Iterable


class WorldSimError(Exception):
    """Bad input, a bad file or a bad setting, with a message that names the problem."""


class SettingError(WorldSimError, ValueError):
    """A bad runtime setting (chunks, temperature, guidance ...): a ``ValueError`` to the API,
    as the runtime documents, and a one-line error to the CLI."""


def refuse_unknown_fields(what: str, d: object, known: Iterable[str]) -> None:
    """Refuse a config object that is not a mapping or holds fields this WorldSim does not know.

    Raises:
        ValueError: naming ``what`` and the unknown fields (a newer WorldSim's, or a typo).
    """
    if not isinstance(d, dict):
        raise ValueError(f"the {what} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d.keys() - set(known))
    if unknown:
        raise ValueError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in the {what}: "
            "a newer WorldSim's, or an edited file; this WorldSim would build another model without them"
        )
