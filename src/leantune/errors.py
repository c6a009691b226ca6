"""Errors a user can cause.

Each carries a message that says what was wrong, where, and what to do. The CLI prints it without a
traceback and exits with `UserError.exit_code`; library callers can catch the class they care about.
"""


class UserError(Exception):
    """Base class: bad input from the user, never a bug in leantune."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override that cannot be turned into a valid RunConfig."""


class DataError(UserError):
    """A dataset that is missing, unreadable, malformed or empty."""


class ModelError(UserError):
    """A base model that cannot be found or loaded."""


class RunDirError(UserError):
    """A run directory that does not exist or is not a leantune run."""


class PlanError(UserError):
    """A run the planner predicts cannot work (does not fit the declared memory)."""


class DuplicateRunError(UserError):
    """A run identical (config, data, base model) to one that already completed."""


class BudgetError(UserError):
    """A run the project budget cannot pay for, or a budget that is not a positive number."""


class RegistryError(UserError):
    """A registry name, version or stage that does not exist or is not valid."""


class ExportError(UserError):
    """An export that cannot be made as asked (format, quant, run state, destination), or one that failed its check."""
