"""The errors `tuner` raises for bad input and lost resources: each names the thing and the fix.

The CLI turns every `TunerError` into its message and exit status (2 for a mistake), so a
user never sees a traceback for a mistake in a study file, a storage URL or a study name, nor
for a database that went away.
"""

from datetime import UTC, datetime


class TunerError(Exception):
    """Bad input or a missing resource that the user can fix; exit status 2 on the command line
    (`exit_status`)."""

    exit_status = 2


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


class StorageUnreachableError(StorageError):
    """The study database stayed unreachable for the whole retry window (an outage, not a
    mistake: exit status 1). The message says since when, and how to go on."""

    exit_status = 1

    def __init__(self, where: str, since: datetime) -> None:
        self.where, self.since = where, since
        super().__init__(
            f"the study database {where} has been unreachable since "
            f"{since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; no finished trial is lost: run the "
            "same `tuner run` (or `tuner worker`) again once it is back, and the study resumes"
        )

    def __reduce__(self) -> tuple:  # rebuilt from its arguments when it crosses processes (Ray)
        return type(self), (self.where, self.since)


class ExecutionError(TunerError):
    """Ray failed under a study (a node or its scheduler died): exit status 1. The message
    says what failed and how to resume."""

    exit_status = 1
