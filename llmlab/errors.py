"""User-facing errors.

Every error a person can cause (a bad file, flag, config or request) is raised as an `LlmlabError`
subclass whose message is one sentence naming what was wrong and what to do. The CLI prints these
without a traceback; anything else reaching the top level is a bug in llmlab.

`is_int` / `is_number` are the type tests those checks share: numpy scalars count, a bool never does.
"""

import numbers


class LlmlabError(Exception):
    """Base class for errors caused by input, not by a bug."""


class ConfigError(LlmlabError, ValueError):
    """A model/run configuration is invalid or unsupported."""


class CheckpointError(LlmlabError):
    """A checkpoint file or directory is missing, unreadable or does not match its config."""


class ArtifactError(LlmlabError):
    """A registry artifact (model, corpus, tokenizer file) could not be fetched or verified."""


class TokenizerError(LlmlabError, ValueError):
    """A tokenizer file, training input or encode request is invalid or unsupported."""


def is_int(v) -> bool:
    """An integer (numpy ones too) that is not a bool: True is not a count or a token id."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_bool(v) -> bool:
    """True or False, Python's or numpy's: "no" or 1 would read as True where a flag is only tested for truth."""
    return type(v).__name__ in ("bool", "bool_")


def is_number(v) -> bool:
    """A real number (numpy ones too; NaN included) that is not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)
