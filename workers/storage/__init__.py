"""Object storage, and everything that reads or writes bytes in it.

One interface (`base`), a local folder (`local`), S3 through boto3 (`s3`), key checks (`keys`),
Parquet and JSON documents in a store (`files`), and the verified weights cache (`weights`).

The names most callers need are here: `from workers.storage import ObjectStore, open_store`.
"""

from workers.storage.base import ObjectInfo, ObjectStore, check_writable, display_key, read_with_deadline
from workers.storage.keys import relative_path, safe_key
from workers.storage.local import LocalStore
from workers.storage.open import open_store
from workers.storage.s3 import S3Store

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "check_writable",
    "display_key",
    "open_store",
    "read_with_deadline",
    "relative_path",
    "safe_key",
]
