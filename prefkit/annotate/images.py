"""The PNG of a sample, read straight out of its shard by key.

At start-up each finished shard's tar headers are read once (no image is decoded) into
key -> (shard, offset, size); a request then costs one ``os.pread``. Only keys of this index can be
served: the URL carries a sample key, never a path, so nothing else of the disk is reachable.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefkit.errors import PrefkitError


class ImageIndex:
    def __init__(self, folder: Path):
        from prefkit.shards import finished_shards, open_shard, shard_members, shard_spec

        self.entries: dict[str, tuple[int, int, int]] = {}  # key -> (fd, offset, size)
        self.fds: list[int] = []
        spec = shard_spec(folder)
        for shard in finished_shards(folder):
            try:  # headers only, each member bounded by the manifest (a plain tar: nothing decompressed)
                with open_shard(shard) as tar:
                    members = [m for _, field, m in shard_members(tar, shard, spec) if field == "png"]
            except PrefkitError:
                self.close()
                raise
            fd = os.open(shard, os.O_RDONLY)
            self.fds.append(fd)
            for m in members:
                key = m.name.split(".", 1)[0]
                self.entries[key] = (fd, m.offset_data, m.size)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def read(self, key: str) -> bytes | None:
        """The PNG bytes of sample ``key``; None for anything that is not a key of this dataset."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        fd, offset, size = entry
        return os.pread(fd, size, offset)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
