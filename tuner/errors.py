"""The errors `tuner` raises for bad input: each names the thing at fault and the fix.

The CLI turns every `TunerError` into its message and exit status 2, so a user never sees a
traceback for a mistake in a study file, a storage URL or a study name.
"""


class TunerError(Exception):
    """Bad input or a missing resource that the user can fix; exit status 2 on the command line."""


class SpecError(TunerError):
    """A study file that is missing, not TOML, or not a valid study."""


class StorageError(TunerError):
    """A storage URL that cannot be opened or reached."""


class StudyNotFoundError(TunerError, KeyError):
    """A study name that is not in the storage; the message lists the studies there are."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DatasetMissingError(TunerError):
    """A dataset whose files are not on disk; the message says which files to put where."""


class EmptyStudyError(TunerError):
    """A study with no completed trial to report on."""


class ClusterUnreachableError(TunerError):
    """A Ray cluster address that does not answer: nothing was started or written."""
