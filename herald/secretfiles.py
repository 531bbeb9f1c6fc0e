"""Secret files: written durably, read safely. The one place either is done.

Herald's secrets on disk are its admin token (``<data>/admin-token``), its CA's and
server's private keys (``<data>/tls/*.key``) and the keys ``herald certs`` writes;
it also reads the ``[tls] key`` an operator gives it. Rules of this module:

1. **A secret is written whole or not at all** (``write_private``): into a temporary
   file beside it, created 0600 with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (never briefly
   wider, never through a planted link), written, fsynced, renamed over the old one,
   and the directory fsynced. A full disk or a crash leaves the old file or none —
   never an empty or cut ``ca.key`` that the next start would take for a key (the
   first start on a full disk did exactly that).
2. **Herald's own secrets are refused unless they are still what Herald wrote**
   (``read_private(…, ours=True)``): a regular file (a symbolic link is not followed,
   ``O_NOFOLLOW``: it could point Herald at any file), at most MAX_SECRET_BYTES, UTF-8
   where it is text, and readable by its owner only. Herald made it 0600; a wider
   mode means someone changed it, and every local user may have read it: start-up
   stops with a ConfigError that says which ``chmod`` to run. Refusing is ssh's
   answer to an unprotected private key too.
3. **A file the operator names is theirs** (``ours=False``: the ``[tls] key``):
   links are followed (certbot's ``live/`` and Kubernetes secret volumes are links),
   and a mode that lets any local user read it, or anyone but its owner write it,
   is a warning, not a refusal (a group-readable key, 0640 ``root:ssl-cert``, is a
   deliberate way to share it and is accepted silently).
4. **The data directory and everything in it is private**: directories 0700
   (``private_dir``), files 0600 — whatever the umask, which can only narrow a mode.
5. Every failure is a HeraldError naming the file: ConfigError for a file that is
   wrong, StorageFull / StorageError for a write the disk refused. No OSError or
   UnicodeDecodeError reaches a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from .errors import ConfigError, HeraldError, StorageError, StorageFull

__all__ = [
    "MAX_SECRET_BYTES",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "exposure",
    "mode_text",
    "operator_file_warning",
    "private_dir",
    "read_private",
    "read_private_text",
    "write_error",
    "write_private",
]

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
# A token is under 100 bytes and a PEM private key under 4 KiB (an RSA-8192 one is
# ~6.5 KiB). A "secret" larger than this is the wrong file (a log, an archive):
# refused before it is read into memory.
MAX_SECRET_BYTES = 64 * 1024


def mode_text(mode: int) -> str:
    """A file's permission bits as people write them: ``0600``."""
    return f"{stat.S_IMODE(mode):04o}"


def exposure(mode: int) -> str | None:
    """Who but the owner may read or write a file of this mode, in words; None if no one."""
    who = []
    if mode & 0o070:
        who.append("its group")
    if mode & 0o007:
        who.append("every local user")
    return " and ".join(who) or None


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as a private directory: 0700 whatever the
    umask. An existing directory is left as it is (``node`` warns about a wide one).
    OSError if it cannot be made (``write_error`` turns it into Herald's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, PRIVATE_DIR_MODE)  # a umask can only narrow it (0500 is no use)


def write_error(exc: OSError, path: Path) -> HeraldError:
    """A failed write or mkdir of ``path`` as Herald's error: StorageFull for a full
    disk (or quota), else StorageError."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left on the device for {path}; nothing was "
                           "changed", path=str(path))
    return StorageError(f"cannot write {path}: {exc.strerror or exc}", path=str(path))


def write_private(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data``, durably: the old file or the new one, never a
    part (rule 1). ``mode`` is 0600 for secrets; a certificate written outside the
    data directory may be 0644. A missing directory is created private (0700).

    StorageFull when the disk is full, StorageError for any other failure.
    """
    directory = path.parent
    # One fixed name per file, so a crash leaves no pile of temporary files; a
    # leftover one is removed first (unlink never follows a link), and O_EXCL makes
    # sure the file written is the one just created.
    tmp = directory / f".{path.name}.tmp"
    try:
        if not directory.is_dir():
            private_dir(directory)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode & PRIVATE_FILE_MODE)
        try:
            os.fchmod(fd, mode)  # exactly: the umask may have narrowed it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(exc, path) from exc
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(exc, path) from exc


def _refusal(what: str, path: Path, exc: OSError) -> ConfigError:
    if exc.errno == errno.ELOOP:
        return ConfigError(f"{what} {path}: is a symbolic link; Herald does not follow links "
                           "to its own secrets (one could point it at any file): put the "
                           "file itself there")
    if exc.errno == errno.EISDIR:
        return ConfigError(f"{what} {path}: is a directory, not a file")
    return ConfigError(f"{what} {path}: cannot read it: {exc.strerror or exc}")


def read_private(path: Path, what: str, *, ours: bool = True) -> bytes:
    """The bytes of a secret file, checked (rules 2 and 3); ``what`` names it in errors
    ("admin token"). FileNotFoundError if there is none; ConfigError if it is refused.
    For an operator's file (``ours=False``) see ``operator_file_warning``."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not hang the start
    if ours:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _refusal(what, path, exc) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{what} {path}: is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path}: is not a regular file")
        if ours and exposure(info.st_mode):
            raise ConfigError(
                f"{what} {path}: mode {mode_text(info.st_mode)} lets "
                f"{exposure(info.st_mode)} read or change it; Herald writes its secrets "
                f"0600 and refuses them otherwise: `chmod 600 {path}`, and if others may "
                "have read it, replace it")
        if info.st_size > MAX_SECRET_BYTES:
            raise ConfigError(f"{what} {path}: {info.st_size} bytes is too large for a "
                              f"secret (at most {MAX_SECRET_BYTES}); is it the right file?")
        chunks = []
        size = 0
        while size <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_SECRET_BYTES:  # it grew while being read
            raise ConfigError(f"{what} {path}: too large for a secret "
                              f"(at most {MAX_SECRET_BYTES} bytes)")
        return b"".join(chunks)
    except OSError as exc:
        raise _refusal(what, path, exc) from None
    finally:
        os.close(fd)


def read_private_text(path: Path, what: str, *, ours: bool = True) -> str:
    """``read_private``, as UTF-8 text; ConfigError if it is not."""
    data = read_private(path, what, ours=ours)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: is not UTF-8 text (byte {exc.start} is "
                          f"{data[exc.start]:#04x}); is it the right file?") from None


def operator_file_warning(path: Path, what: str) -> str | None:
    """A warning if the secret file an operator named may be read by every local user,
    or changed by anyone but its owner (rule 3); None if not, or if there is no such
    file (whoever loads it says so)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    mode = stat.S_IMODE(info.st_mode)
    problems = []
    if mode & 0o004:
        problems.append("every local user can read it")
    writers = [who for bit, who in ((0o020, "its group"), (0o002, "every local user"))
               if mode & bit]
    if writers:
        problems.append(f"{' and '.join(writers)} can change it")
    if not problems:
        return None
    return (f"{what} {path} has mode {mode_text(mode)}: {'; '.join(problems)}; "
            f"`chmod 600 {path}` (or 640 for a group that must read it)")
