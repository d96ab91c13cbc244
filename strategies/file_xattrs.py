"""Extended attributes of a tree's entries: read at backup time, carried in the tar stream as
PAX `SCHILY.xattr.<name>` records (the keyword GNU tar and bsdtar use, so that
`tar -x --xattrs --xattrs-include='*'` restores them from a decrypted stream), written back on
restore.

Every namespace the kernel lists is kept:
- `user.*`;
- `trusted.*` (listed and written only with CAP_SYS_ADMIN, i.e. as root);
- `security.*`: SELinux/SMACK labels and file capabilities (`security.capability`, written
  only with CAP_SETFCAP; the kernel drops it on chown, so it is set after the owner);
- `system.*`: POSIX ACLs, `system.posix_acl_access` and on directories
  `system.posix_acl_default`, in the kernel's binary form (numeric uids/gids), which reads
  back byte for byte once written.

Values are bytes. tarfile keeps PAX values as text: they travel as str decoded from UTF-8 with
`surrogateescape`, which tarfile writes back byte for byte (with a `hdrcharset=BINARY` record
when a value is not valid UTF-8) and decodes the same way when reading. A name that cannot be a
PAX keyword (it contains "=" or is not valid UTF-8) cannot be archived: the dump says so.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Mapping

PAX_PREFIX = "SCHILY.xattr."
#: GNU tar's (and bsdtar's) text form of POSIX ACLs, written too so that `tar --acls` restores
#: them; drd itself restores ACLs from the xattr records
ACL_TEXT_RECORDS = {
    "system.posix_acl_access": "SCHILY.acl.access",
    "system.posix_acl_default": "SCHILY.acl.default",
}
ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
CAPABILITY = "security.capability"
#: namespaces only a privileged process (root) can read or write
PRIVILEGED = ("trusted.", "security.")

#: name -> value
Xattrs = dict[str, bytes]

_UNSUPPORTED = {errno.ENOTSUP, errno.EOPNOTSUPP}
#: setxattr errors that mean "this target cannot hold this attribute" (not a broken restore):
#: no support (ENOTSUP; EINVAL for ACLs on a filesystem without them), not permitted (EPERM:
#: trusted.*, capabilities or user.* on a special file without the privilege), too large for
#: the filesystem (E2BIG, ERANGE, ENOSPC: the attribute space of one inode is full), quota.
_CANNOT_HOLD = _UNSUPPORTED | {
    errno.EINVAL,
    errno.EPERM,
    errno.EACCES,
    errno.E2BIG,
    errno.ERANGE,
    errno.ENOSPC,
    errno.EDQUOT,
}


def is_privileged(name: str) -> bool:
    return name.startswith(PRIVILEGED)


def is_acl(name: str) -> bool:
    return name in (ACL_ACCESS, ACL_DEFAULT)


def archivable(name: str) -> bool:
    """Whether `name` can be a PAX record keyword (`SCHILY.xattr.<name>`)."""
    if "=" in name or not name:
        return False
    try:
        name.encode("utf-8", "strict")
    except UnicodeEncodeError:  # undecodable bytes, kept by os as surrogates
        return False
    return True


def read(target: int | str) -> tuple[Xattrs, list[str]]:
    """The attributes of an open file (fd) or of a path (symlinks not followed), sorted by
    name, and the names that cannot be archived. A filesystem without xattr support has none;
    other errors (EACCES on a file drd cannot read) propagate."""
    try:
        if isinstance(target, int):
            names = os.listxattr(target)
        else:
            names = os.listxattr(target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return {}, []
        raise
    found: Xattrs = {}
    refused: list[str] = []
    for name in sorted(names):
        if not archivable(name):
            refused.append(name)
            continue
        try:
            if isinstance(target, int):
                found[name] = os.getxattr(target, name)
            else:
                found[name] = os.getxattr(target, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed since it was listed
                continue
            raise
    return found, refused


def pax_records(xattrs: Mapping[str, bytes]) -> dict[str, str]:
    """PAX records for `xattrs` (see the module docstring for how bytes travel), and the text
    form of POSIX ACLs for other tar programs."""
    records = {
        PAX_PREFIX + name: value.decode("utf-8", "surrogateescape")
        for name, value in xattrs.items()
    }
    for name, keyword in ACL_TEXT_RECORDS.items():
        if name in xattrs:
            text = acl_text(xattrs[name])
            if text is not None:
                records[keyword] = text
    return records


_ACL_VERSION = 2
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_ACL_NAMED = (0x02, 0x08)


def acl_text(value: bytes) -> str | None:
    """The kernel's binary POSIX ACL as acl_to_text(3) writes it on one line, with numeric
    ids ("user::rw-,user:1000:r--,group::r--,mask::r--,other::r--"); None if malformed."""
    if len(value) < 4 or (len(value) - 4) % 8:
        return None
    (version,) = struct.unpack_from("<I", value)
    if version != _ACL_VERSION:
        return None
    parts: list[str] = []
    for offset in range(4, len(value), 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, offset)
        if tag not in _ACL_TAGS:
            return None
        who = str(ident) if tag in _ACL_NAMED else ""
        bits = "".join(c if perm & m else "-" for c, m in (("r", 4), ("w", 2), ("x", 1)))
        parts.append(f"{_ACL_TAGS[tag]}:{who}:{bits}")
    return ",".join(parts)


def from_pax(pax_headers: Mapping[str, str]) -> Xattrs:
    """The attributes a member's PAX records carry."""
    return {
        key[len(PAX_PREFIX) :]: value.encode("utf-8", "surrogateescape")
        for key, value in pax_headers.items()
        if key.startswith(PAX_PREFIX) and len(key) > len(PAX_PREFIX)
    }


def apply(target: int | str, xattrs: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """Set `xattrs` on an open file (fd) or a path (symlinks not followed). Returns the
    (name, reason) of each attribute the target cannot hold; other errors propagate."""
    failed: list[tuple[str, str]] = []
    for name, value in xattrs.items():
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _CANNOT_HOLD:
                raise
            failed.append((name, _reason(name, exc)))
    return failed


def remove_inherited_acls(target: int | str, keep: Mapping[str, bytes]) -> None:
    """Remove POSIX ACLs the entry got from its parent directory's default ACL when it was
    created, unless the archive has them too (the source entry had no such ACL)."""
    for name in (ACL_ACCESS, ACL_DEFAULT):
        if name in keep:
            continue
        try:
            if isinstance(target, int):
                os.removexattr(target, name)
            else:
                os.removexattr(target, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _CANNOT_HOLD | {errno.ENODATA}:
                raise


def _reason(name: str, exc: OSError) -> str:
    code = exc.errno
    if code in _UNSUPPORTED or (code == errno.EINVAL and is_acl(name)):
        return "the filesystem does not support it"
    if code in (errno.EPERM, errno.EACCES):
        if name.startswith("user."):
            return "not permitted on this kind of entry"
        return "not permitted (needs root)"
    if code in (errno.E2BIG, errno.ERANGE, errno.ENOSPC):
        return "too large for the filesystem"
    return os.strerror(code) if code is not None else str(exc)
