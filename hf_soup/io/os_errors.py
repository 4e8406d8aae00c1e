"""Operating-system failures a user can fix (disk full, quota, too many open files) as clean errors.

>>> describe(OSError(28, "No space left on device", "/data/soup/model.safetensors"))
'no space left on the device writing /data/soup/model.safetensors; free some space or write the soup to another disk (-o DIR)'
"""

from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import Iterator

from ..errors import HfSoupError, ResourceError

_FIXES = {
    errno.ENOSPC: "no space left on the device{where}; free some space or write the soup to another disk (-o DIR)",
    errno.EDQUOT: "disk quota exceeded{where}; free some space or write the soup to another disk (-o DIR)",
    errno.EFBIG: "file too large{where}: the file size limit (`ulimit -f`) or the filesystem is too small for this "
                 "shard; lower --max-shard-size, raise the limit, or write the soup elsewhere (-o DIR)",
    errno.EMFILE: "too many open files{where}: the ingredients' weight files exceed this process's limit; raise it "
                  "(e.g. `ulimit -n 65536`) or soup fewer or less-sharded checkpoints",
    errno.ENFILE: "the system ran out of file handles{where}; close other programs or raise fs.file-max, then retry",
}


def describe(error: OSError) -> str | None:
    """A one-line description and fix for a resource error, ``None`` for any other ``OSError``."""
    text = _FIXES.get(error.errno)
    if text is None:
        return None
    where = f" writing {error.filename}" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and error.filename else (
        f" ({error.filename})" if error.filename else "")
    return text.format(where=where)


@contextmanager
def resource_errors() -> Iterator[None]:
    """Re-raise disk-full / quota / file-descriptor ``OSError`` as :class:`ResourceError`."""
    try:
        yield
    except HfSoupError:
        raise
    except OSError as error:
        message = describe(error)
        if message is None:
            raise
        resource = ResourceError(message)
        resource.errno = error.errno
        raise resource from None
