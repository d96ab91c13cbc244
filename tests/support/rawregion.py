"""Direct access to a region's objects, around drd: what someone with write access to ONE
region (a bucket, a mounted directory) can do. Local regions are plain files; GCS regions are
reached with google-cloud-storage itself, never through drd's code.

    raw = RawRegion.local(path) | RawRegion.gcs(server, bucket, prefix="drd")
    raw.list_keys("plan/source/")            every object key under a prefix, sorted
    raw.read(key) / raw.write(key, data) / raw.delete(key)
    raw.copy_tree(src_prefix, dst_prefix)
    raw.flip(key, offset) / raw.truncate(key, size)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.support.fakegcs import FakeGcsServer


@dataclass
class RawRegion:
    name: str
    root: Path | None = None
    bucket: Any = None
    prefix: str = ""

    @classmethod
    def local(cls, name: str, root: Path) -> RawRegion:
        return cls(name, root=root)

    @classmethod
    def gcs(cls, name: str, server: FakeGcsServer, bucket: str, prefix: str = "drd") -> RawRegion:
        client = storage.Client(
            project="test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": server.endpoint},
        )
        return cls(name, bucket=client.bucket(bucket), prefix=prefix.strip("/") + "/")

    def list_keys(self, prefix: str = "") -> list[str]:
        if self.root is not None:
            return sorted(
                str(p.relative_to(self.root))
                for p in self.root.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.parts)
                and str(p.relative_to(self.root)).startswith(prefix)
            )
        blobs = self.bucket.client.list_blobs(self.bucket, prefix=self.prefix + prefix)
        return sorted(str(b.name)[len(self.prefix) :] for b in blobs)

    def read(self, key: str) -> bytes:
        if self.root is not None:
            return (self.root / key).read_bytes()
        return bytes(self.bucket.blob(self.prefix + key).download_as_bytes())

    def write(self, key: str, data: bytes) -> None:
        if self.root is not None:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        self.bucket.blob(self.prefix + key).upload_from_string(data)

    def delete(self, key: str) -> None:
        if self.root is not None:
            (self.root / key).unlink()
            return
        self.bucket.blob(self.prefix + key).delete()

    def copy_tree(self, src: str, dst: str) -> list[str]:
        """Copy every object under `src` to the same name under `dst`; return the new keys."""
        made = []
        for key in self.list_keys(src):
            target = dst + key[len(src) :]
            self.write(target, self.read(key))
            made.append(target)
        return made

    def flip(self, key: str, offset: int | None = None) -> None:
        """Flip one bit in place: the object keeps its size."""
        data = bytearray(self.read(key))
        data[len(data) // 2 if offset is None else offset] ^= 0x10
        self.write(key, bytes(data))

    def truncate(self, key: str, size: int) -> None:
        self.write(key, self.read(key)[:size])

    def snapshot(self, prefix: str = "") -> dict[str, bytes]:
        return {key: self.read(key) for key in self.list_keys(prefix)}
