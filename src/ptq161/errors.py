"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class PTQ161Error(Exception):
    """A problem with the user's input (model, data, options) that has a one-line explanation."""


class UnsupportedModelError(PTQ161Error):
    """The model's architecture has no adapter and generic discovery failed."""


class DataError(PTQ161Error):
    """A corpus or data file is missing, unreadable or too short."""
