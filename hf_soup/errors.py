"""Exceptions raised by hf_soup.

Every error says what went wrong *and* what to do next. All derive from
:class:`HfSoupError`, so ``except HfSoupError`` catches anything the library raises
on purpose.
"""

from __future__ import annotations


class HfSoupError(Exception):
    """Base class of every error hf_soup raises on purpose."""


class RecipeError(HfSoupError, ValueError):
    """A recipe, CLI flag or API argument is invalid.

    The message names the field, e.g. ``method.lr: must be > 0``.
    """


class MethodParameterError(RecipeError):
    """A soup method was given parameters it cannot use."""


class UnknownMethodError(RecipeError):
    """No soup method is registered under the requested name."""


class IngredientError(HfSoupError):
    """An ingredient reference cannot be resolved or read."""


class IngredientNotFoundError(IngredientError, FileNotFoundError):
    """A local path or Hub repository named as an ingredient does not exist."""


class NoWeightsError(IngredientError):
    """An ingredient holds no weight files hf_soup can read."""


class CorruptWeightsError(IngredientError):
    """A weight file is truncated, malformed or otherwise unreadable."""


class UnsafePathError(IngredientError):
    """An ingredient names or links to a file outside its own folder (``..``, an absolute path, a symlink)."""


class NonFiniteError(HfSoupError):
    """NaN / Inf in an ingredient, or merged values the output dtype cannot hold.

    Refused unless ``allow_nonfinite`` (``--allow-nonfinite``) is given.
    """


class AlignmentError(HfSoupError):
    """The ingredients' state dicts cannot be aligned key by key.

    ``differences`` lists the first differing entries as dictionaries.
    """

    def __init__(self, message: str, differences: list[dict] | None = None):
        super().__init__(message)
        self.differences = differences or []


class OutputExistsError(HfSoupError, FileExistsError):
    """The destination exists and ``overwrite`` was not given."""


class OutputNotWritableError(HfSoupError, OSError):
    """The output directory (or the folder it goes in) cannot be created or written."""


class OutputRefusedError(OutputExistsError):
    """``overwrite`` would delete something hf-soup did not make (a folder that is not a soup, the current folder)."""


class ResourceError(HfSoupError, OSError):
    """The machine ran out of something the run needs: disk space, quota or file descriptors."""


class NothingToSoupError(HfSoupError):
    """A training run or sweep produced no checkpoint or trial model to soup."""


class EvaluationError(HfSoupError):
    """An evaluation dataset or metric cannot be used with these ingredients."""


class HubError(HfSoupError):
    """A Hub operation (pull or push) failed; the message says how to retry."""


class TokenError(HubError, RecipeError):
    """A Hub token is malformed (whitespace, a newline, characters a token cannot have); never echoed."""


class RevisionNotFoundError(IngredientNotFoundError):
    """A Hub ingredient's repo exists but the branch, tag or commit named after ``@`` does not."""


class IngredientAccessError(IngredientError, PermissionError):
    """A Hub ingredient is gated or the token was refused; the message says how to get access."""


class AdapterError(IngredientError):
    """A PEFT adapter ingredient cannot be used (its files, its base or its options)."""


class UnsupportedAdapterError(AdapterError):
    """The adapter uses a PEFT type or option whose merge hf_soup does not implement.

    The message names the option (``use_dora``, ``bias``...) so the adapter is never
    silently mis-merged.
    """


class AdapterBaseError(AdapterError):
    """The base model of an adapter is missing, unreadable, or differs between adapters."""


class DistributedError(HfSoupError):
    """A multi-process run (``torchrun`` / ``accelerate launch``) cannot go on."""


class RankFailedError(DistributedError):
    """Another process of a multi-process run failed; every process stops with its error.

    ``rank`` is the failed process, ``error_type`` the name of its exception.
    """

    def __init__(self, message: str, rank: int = -1, error_type: str = ""):
        super().__init__(message)
        self.rank = rank
        self.error_type = error_type


class DependencyVersionError(HfSoupError, ImportError):
    """An installed dependency's version is outside the range hf_soup supports.

    The message is one line: the package, its version, the supported range and the pip command that fixes it.
    """
