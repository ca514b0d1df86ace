"""A loop-mounted ext4 image as a broker's data dir, and a disk failure on it (tests run
as root).

    image = LoopExt4(tmp_path / "data.img", mountpoint)   # mkfs.ext4 + mount -o loop
    how = image.fail()       # writes and fsyncs on it fail from now on (EROFS)
    ...                      # stop whatever has files open on it
    image.repair()           # back to a writable, checked file system, same contents
    image.cleanup()          # umount (lazily if still busy), loop device detached,
                             # image deleted; safe to call in a finally, twice

fail() tries `mount -o remount,ro` first. The kernel refuses that (EBUSY) while any
file on the file system is open for writing, which a running broker always has (its
active segments), so it then remounts with ext4's `abort` option: the file system
goes to the state ext4 puts a failed disk in (errors=remount-ro: "emergency_ro" in
/proc/mounts), every write, create and fsync fails with EROFS, reads still work, and
open file descriptors stay open. That is the read-only remount of a failing disk as
the broker sees it. An aborted ext4 cannot be remounted rw; repair() unmounts it,
runs e2fsck -fy and mounts it again (a plain `remount,rw` after a plain `remount,ro`).

tests/server/test_nemesis.py has its own fixture doing the mkfs/mount/cleanup part
for a single broker; this is the reusable form, with the failure and the repair.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["LoopExt4", "DiskError"]

COMMAND_TIMEOUT_S = 60.0
DEFAULT_BYTES = 256 << 20


class DiskError(AssertionError):
    pass


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


class LoopExt4:
    def __init__(self, image: Path, mountpoint: Path, size: int = DEFAULT_BYTES):
        self.image, self.mountpoint, self.size = Path(image), Path(mountpoint), size
        self.mounted = False
        self.failed: str | None = None      # "ro" or "abort" while failed
        self.events: list[str] = []         # what was done, for a report

    # --- set-up ------------------------------------------------------------------------

    def create(self) -> "LoopExt4":
        """A fresh image (sparse), mkfs.ext4, mounted at mountpoint (created if needed)."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        made = _run("mkfs.ext4", "-q", "-F", str(self.image))
        if made.returncode != 0:
            raise DiskError(f"mkfs.ext4 {self.image} failed: {made.stderr}")
        self._mount()
        # lost+found is not a partition directory; nothing else is left on the image
        return self

    def _mount(self) -> None:
        mounted = _run("mount", "-o", "loop", str(self.image), str(self.mountpoint))
        if mounted.returncode != 0:
            raise DiskError(f"cannot loop-mount {self.image} at {self.mountpoint} (tests "
                            f"run as root): {mounted.stderr}")
        self.mounted = True
        self.events.append("mounted rw")

    def options(self) -> str:
        """The mount options /proc/self/mounts shows for mountpoint ("" if unmounted)."""
        target = os.path.realpath(self.mountpoint)
        with open("/proc/self/mounts", encoding="utf-8") as f:
            found = [line.split()[3] for line in f if line.split()[1] == target]
        return found[-1] if found else ""

    # --- the fault ---------------------------------------------------------------------

    def fail(self) -> str:
        """Make the file system read-only under whoever uses it; returns "ro" (a plain
        remount) or "abort" (ext4's emergency read-only, when files are open for
        writing). Raises DiskError if neither works."""
        assert self.mounted and self.failed is None, (self.mounted, self.failed)
        ro = _run("mount", "-o", "remount,ro", str(self.mountpoint))
        if ro.returncode == 0:
            self.failed = "ro"
        else:
            self.events.append(f"remount,ro refused: {ro.stderr.strip().splitlines()[0]}")
            abort = _run("mount", "-o", "remount,abort", str(self.mountpoint))
            if abort.returncode != 0:
                raise DiskError(f"neither remount,ro ({ro.stderr.strip()}) nor "
                                f"remount,abort ({abort.stderr.strip()}) worked")
            self.failed = "abort"
        self.events.append(f"failed ({self.failed}): options {self.options()}")
        probe = self.mountpoint / ".write-probe"
        try:
            with open(probe, "wb") as f:
                f.write(b"x")
        except OSError:
            pass
        else:
            os.unlink(probe)
            raise DiskError(f"{self.mountpoint} still writable after remount "
                            f"({self.failed}): {self.options()}")
        return self.failed

    def repair(self) -> None:
        """Writable again with the same contents. After "abort": umount (nothing may
        hold a file open on it: stop the broker first), e2fsck -fy, mount."""
        assert self.failed is not None, "repair() without fail()"
        if self.failed == "ro":
            rw = _run("mount", "-o", "remount,rw", str(self.mountpoint))
            if rw.returncode != 0:
                raise DiskError(f"remount,rw failed: {rw.stderr}")
            self.events.append("remounted rw")
        else:
            umounted = _run("umount", str(self.mountpoint))
            if umounted.returncode != 0:
                raise DiskError(f"umount {self.mountpoint} failed (a process still has a "
                                f"file open on it?): {umounted.stderr}")
            self.mounted = False
            self._detach()
            checked = _run("e2fsck", "-fy", str(self.image))
            # 0: clean, 1: errors corrected; more is a file system e2fsck could not fix
            if checked.returncode not in (0, 1):
                raise DiskError(f"e2fsck -fy exited {checked.returncode}: "
                                f"{checked.stdout[-2000:]} {checked.stderr[-2000:]}")
            self.events.append(f"e2fsck exit {checked.returncode}")
            self._mount()
        self.failed = None

    # --- tear-down ---------------------------------------------------------------------

    def _detach(self) -> None:
        listed = _run("losetup", "-j", str(self.image)).stdout
        for line in listed.splitlines():
            _run("losetup", "-d", line.split(":", 1)[0])

    def cleanup(self) -> None:
        """Unmount (lazily if busy), detach the loop device, delete the image. Never
        raises for an already clean state."""
        if self.mounted:
            if _run("umount", str(self.mountpoint)).returncode != 0:
                _run("umount", "-l", str(self.mountpoint))
                self.events.append("unmounted lazily (busy)")
            self.mounted = False
        self._detach()
        if self.image.exists() and not _run("losetup", "-j", str(self.image)).stdout.strip():
            self.image.unlink()
