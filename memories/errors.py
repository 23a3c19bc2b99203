"""The one exception tree of the project, rooted here, and the model core's subtree.

::

    SpartanError                      memories.errors: the root; the CLI prints any as one line
    ├── MemoriesError                 memories.errors: the model core (this module)
    ├── ServiceError                  service.errors: the HTTP service
    └── LoadTestError                 loadtest.errors: the harness

Every error a user can cause (a bad file, a wrong backbone, a broken data set) is one of these,
with a message that says what to fix. The HTTP service maps the classes to status codes in one
table (``service.api.errors``); nothing raises bare ``ValueError`` for user input.
"""


class SpartanError(Exception):
    """Root of every error the project raises on purpose; the message is safe to show."""


class MemoriesError(SpartanError):
    """Base of the model core's errors (memory files, backbones, data, options)."""


class ConfigError(MemoriesError):
    """A hyper-parameter or option is out of range (e.g. top-K larger than the parent count)."""


class UnknownBackboneError(MemoriesError):
    """The backbone spec is neither a known short name nor a loadable local directory."""


class InvalidMemoryFileError(MemoriesError):
    """The bytes are not a valid memory file; the message says exactly which check failed."""


class MemoryTooLargeError(InvalidMemoryFileError):
    """The file is larger than the configured limit."""


class BackboneMismatchError(MemoriesError):
    """The memory file is valid but was trained for another backbone."""


class DataError(MemoriesError):
    """A data set file is missing or holds rows that cannot be used."""
