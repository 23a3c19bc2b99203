"""The exception tree of the memories package.

Every error a user can cause (a bad file, a wrong backbone, a broken data set) is one of these,
with a message that says what to fix. Callers such as the HTTP service map the classes to status
codes; nothing else in the package raises bare ``ValueError`` for user input.
"""


class SpartanError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(SpartanError):
    """A hyper-parameter or option is out of range (e.g. top-K larger than the parent count)."""


class UnknownBackboneError(SpartanError):
    """The backbone spec is neither a known short name nor a loadable local directory."""


class InvalidMemoryFileError(SpartanError):
    """The bytes are not a valid memory file; the message says exactly which check failed."""


class MemoryTooLargeError(InvalidMemoryFileError):
    """The file is larger than the configured limit."""


class BackboneMismatchError(SpartanError):
    """The memory file is valid but was trained for another backbone."""


class DataError(SpartanError):
    """A data set file is missing or holds rows that cannot be used."""
