"""Reading the files of the image archives (tar) the tests build."""

from __future__ import annotations

import tarfile


def file_in(archive: tarfile.TarFile, name: str) -> bytes:
    """The contents of a regular file in the archive; fails naming it when it is not there as one."""
    member = archive.extractfile(name)
    assert member is not None, f"{name} is not a regular file in the archive"
    return member.read()
