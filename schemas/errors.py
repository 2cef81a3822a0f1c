"""Every error fastsam-label raises on purpose, in one hierarchy. Callers catch families, not modules' classes.

    FastsamError                        exit 1: the run failed (fix the cause, run again to resume)
    ├── InvalidInputError               exit 2: the job, a flag, a file or a run's data is wrong
    │   ├── JobError                      a job that cannot run: every bad field and its fix
    │   │   ├── DuplicateKeyError           a key given twice in a job file
    │   │   ├── RunMismatchError            the run id was planned by a job of another fingerprint
    │   │   ├── EmptySourceError            the source lists nothing the job labels
    │   │   └── ListingError                a source manifest or S3 Inventory that cannot be read
    │   ├── UriError                      not an s3:// URI, folder or file:// URI
    │   ├── UnsafeKeyError                a key that could leave its root, or cannot be a file path
    │   ├── LayoutError                   a run id, shard or attempt id that cannot be part of a key
    │   ├── CheckpointError               weights missing, unpinned, of another hash or architecture
    │   ├── PromptTableError              the sidecar prompt table (names the row)
    │   ├── ImageError                    an object that cannot become an image (`kind`: its row status)
    │   ├── TableError                    an object that is not one of our tables
    │   │   └── SchemaVersionError          a table of a schema version this code does not read
    │   ├── RunNotFoundError              no such run under the output
    │   ├── RunDamagedError               a committed run's files or manifest are not what it names
    │   ├── ExportOptionsError            export flags that do not work together
    │   ├── ExportManifestError           an export manifest at a destination that is not ours
    │   ├── PathCollisionError            two keys need one file of an export
    │   ├── ClusterSettingError           the environment asks the private cluster for what it refuses
    │   └── UnorderedListingError         a store that lists keys out of key order
    ├── NothingToDoError                exit 3: nothing was labelled, or the filters select nothing
    │   └── NothingSelectedError
    ├── UnavailableError                exit 4: storage, the cluster or a server cannot be reached or refuses
    │   ├── StoreError (an OSError)       an object could not be read or written
    │   │   ├── ObjectNotFoundError         exit 2: the object does not exist (a path or key we were given)
    │   │   ├── ObjectTooLargeError         over limits.max_bytes
    │   │   ├── NotAFileError               a local entry that is not a regular file
    │   │   ├── StoreAccessError            credentials, permissions, no such bucket
    │   │   ├── StoreUnavailableError       transient: timeouts, resets, 5xx, SlowDown after every retry
    │   │   └── ReadDeadlineError           transient: not read whole within storage.object_timeout_s
    │   ├── ClusterError                  the Ray cluster cannot be started or reached
    │   ├── PoolError                     no Labeler actor can run (none started, or none fits a node)
    │   ├── PrefectServerError            the temporary Prefect server did not come up
    │   └── LabelStudioError              a Label Studio server refused or cannot be reached
    ├── BusyError                       exit 5: another flow holds the run
    │   └── RunBusyError
    ├── NotCommittedError               exit 6: the run is not committed yet
    │   └── RunNotCommittedError
    ├── NotEmptyError                   exit 7: the destination holds what this would replace
    │   ├── DestinationNotEmptyError
    │   └── LabelStudioProjectExistsError
    └── RunFailedError                  exit 1: some shards failed; `summary` says which and why
        ├── RunIncompleteError            a commit found shards not done
        ├── ShardCommitError              a shard's files cannot be made its marker's
        └── ShardError                    labelling a shard raised in the actor; transient as its cause

`exit_code` and `transient` are class attributes (`ShardError` sets `transient` from its cause):
the CLI's exit code is `exit_code_of(e)`, and Prefect retries a task when its error is `transient`
(`is_transient`). Anything else that reaches the CLI (a bare ValueError, a KeyError) is a bug:
exit 1 and a hint to run with --debug.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas.manifest import RunSummary


class FastsamError(Exception):
    """The root: an error fastsam-label raises on purpose, with a message that names the object and the fix."""

    exit_code: int = 1
    transient: bool = False


# Families ------------------------------------------------------------------------------------


class InvalidInputError(FastsamError):
    """The job, a flag, a file we were given, or a run's data is wrong; trying again will not help."""

    exit_code = 2


class NothingToDoError(FastsamError):
    """Nothing was labelled, or the filters select nothing."""

    exit_code = 3


class UnavailableError(FastsamError):
    """Storage, the cluster or a server cannot be reached or refuses us."""

    exit_code = 4


class BusyError(FastsamError):
    """Another flow holds the run."""

    exit_code = 5


class NotCommittedError(FastsamError):
    """The run is not committed yet."""

    exit_code = 6


class NotEmptyError(FastsamError):
    """The destination holds what this would replace."""

    exit_code = 7


class RunFailedError(FastsamError):
    """Some shards failed; the run was not committed. `summary` (a RunSummary, or None) says which and why."""

    def __init__(self, message: str, summary: RunSummary | None = None):
        super().__init__(message)
        self.summary = summary


# Invalid input -------------------------------------------------------------------------------


class JobError(InvalidInputError):
    """A job that cannot run. The message lists every bad field with its fix."""


class DuplicateKeyError(JobError):
    """A mapping in a job file names one key twice."""


class RunMismatchError(JobError):
    """The run id was planned by a job with another fingerprint."""


class EmptySourceError(JobError):
    """The source lists no object the job would label."""


class ListingError(JobError):
    """A source manifest or S3 Inventory cannot be read: not a table, no key column, a bad manifest.json."""


class UnorderedListingError(InvalidInputError):
    """A store listed keys out of key order (a planner streams the listing and resumes after a key)."""


class UriError(InvalidInputError):
    """Not an s3:// URI, a folder or a file:// URI."""


class UnsafeKeyError(InvalidInputError):
    """A key that could leave its store's root, or cannot be a relative file path; the message says why."""


class LayoutError(InvalidInputError):
    """A run id, shard number or attempt id that cannot be part of a key."""


class CheckpointError(InvalidInputError):
    """A model file is missing, does not match its pinned hash, is not pinned, or is of an unknown architecture."""


class PromptTableError(InvalidInputError):
    """The prompt table cannot be used; the message names the row and the fix."""


class ImageError(InvalidInputError):
    """An object that could not become an image. `kind` is the images-table status it gets."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class TableError(InvalidInputError):
    """An object that should hold one of our tables does not; the message names it."""


class SchemaVersionError(TableError):
    """A table written by a schema this code does not read."""


class RunNotFoundError(InvalidInputError):
    """No run of that id under the output."""


class RunDamagedError(InvalidInputError):
    """A committed run's files are missing, damaged or not the ones its manifest names; the message names one."""


#: What to do about a damaged run: the end of every RunDamagedError message about a run's files.
DAMAGED_FIX = "the run's files changed after it was committed; restore them, or label again under a new run id"


class ExportOptionsError(InvalidInputError):
    """Export options that cannot work together; the message names the flag and the fix."""


class ExportManifestError(InvalidInputError):
    """An export manifest at the destination that cannot be read; the message names it."""


class PathCollisionError(InvalidInputError):
    """Two keys want one file of an export (or one needs a folder where the other is a file)."""


class ClusterSettingError(InvalidInputError):
    """The environment asks the private cluster for something it refuses (RAY_AUTH_MODE=disabled)."""


# Nothing to do -------------------------------------------------------------------------------


class NothingSelectedError(NothingToDoError):
    """The filters leave nothing to export."""


# Unavailable ---------------------------------------------------------------------------------


class StoreError(UnavailableError, OSError):
    """An object could not be read or written; the message names it and says why."""


class ObjectNotFoundError(StoreError):
    """The object does not exist (a path or key the job or a flag named: exit 2)."""

    exit_code = 2


class ObjectTooLargeError(StoreError):
    """The object is bigger than the caller's byte limit."""


class NotAFileError(StoreError):
    """A local source entry that is not a regular file (a named pipe, socket or device): never read."""


class StoreAccessError(StoreError):
    """The store refuses us or does not exist: wrong credentials, no permission, no such bucket."""


class StoreUnavailableError(StoreError):
    """The store could not be reached or kept failing (timeouts, resets, 5xx, SlowDown) after every retry."""

    transient = True


class ReadDeadlineError(StoreError):
    """An object was not read whole within storage.object_timeout_s."""

    transient = True


class ClusterError(UnavailableError):
    """The Ray cluster cannot be started or reached; the message says how to fix it."""


class PoolError(UnavailableError):
    """The pool cannot label: no actor could start, or none fits a node of the cluster."""


class PrefectServerError(UnavailableError):
    """The temporary Prefect server did not come up."""


class LabelStudioError(UnavailableError):
    """The Label Studio server cannot be reached, or refused a request; the message says what to do."""


# Busy, not committed, not empty --------------------------------------------------------------


class RunBusyError(BusyError):
    """Another flow holds the run (or took it over); the message names it and what to do."""


class RunNotCommittedError(NotCommittedError):
    """The run exists but is not committed; the message says how to finish it."""


class DestinationNotEmptyError(NotEmptyError):
    """The destination holds files this export may not replace; the message says how to go on."""


class LabelStudioProjectExistsError(NotEmptyError):
    """A Label Studio project with the requested title exists and --force was not given."""


# Run failed ----------------------------------------------------------------------------------


class RunIncompleteError(RunFailedError):
    """The run cannot be committed: some shards are not done."""


class ShardCommitError(RunFailedError):
    """A shard's published files cannot be made to match its marker; the message names the fix."""


class ShardError(RunFailedError):
    """Labelling a shard raised inside the actor (not an actor death).

    Attributes:
        cause: the exception the Labeler raised.
        transient: whether trying again later may pass (the cause is transient).
    """

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause
        self.transient = is_transient(cause)


def exit_code_of(e: BaseException) -> int | None:
    """The CLI's exit code for an error raised on purpose; None for anything else (a bug)."""
    return e.exit_code if isinstance(e, FastsamError) else None


def is_transient(e: Any) -> bool:
    """Whether trying again later may pass: the one retry rule (Prefect's retry condition, the pool)."""
    return isinstance(e, FastsamError) and e.transient
