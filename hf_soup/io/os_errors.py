"""Operating-system failures a user can fix (disk full, quota, too many open files) as clean errors.

>>> describe(OSError(28, "No space left on device", "/data/soup/model.safetensors"))
'No space left on device writing /data/soup/model.safetensors; free some space or write the soup to another disk (-o DIR)'
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import HfSoupError, ResourceError

_MORE_SPACE = "free some space or write the soup to another disk (-o DIR)"
_FIXES = {
    errno.ENOSPC: _MORE_SPACE,
    errno.EDQUOT: _MORE_SPACE,
    errno.EFBIG: "the file size limit (`ulimit -f`) or the filesystem is too small for a shard; lower "
                 "--max-shard-size, raise the limit, or write the soup elsewhere (-o DIR)",
    errno.EMFILE: "the ingredients' weight files exceed this process's open-file limit; raise it "
                  "(e.g. `ulimit -n 65536`) or soup fewer or less-sharded checkpoints",
    errno.ENFILE: "the system ran out of file handles; close other programs or raise fs.file-max, then retry",
}
_WRITING = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def describe(error: OSError) -> str | None:
    """A one-line description and fix for a resource error, ``None`` for any other ``OSError``."""
    fix = _FIXES.get(error.errno)
    if fix is None:
        return None
    where = ""
    if error.filename:
        where = f" writing {error.filename}" if error.errno in _WRITING else f" ({error.filename})"
    return f"{error.strerror or os.strerror(error.errno)}{where}; {fix}"


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
