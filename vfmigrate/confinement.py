"""Where libvirt's daemon runs hooks, and whether vfmigrate's hook runs there.

A hook that libvirt cannot execute fails every guest start, and a failing
``reconnect`` hook makes a restarted libvirtd kill running guests.  So the hook
is *enabled* only once it has been seen to run under the same confinement as
the daemon that will run it, and ``vfmigrate doctor`` re-runs that proof.

Placement (see packaging/README.md for the analysis of the distributions'
profiles): the package installs the hook program as
``/usr/libexec/vfmigrate/qemu-hook``; enabling copies it, as a regular root
0755 file, to ``/etc/libvirt/hooks/qemu.d/vfmigrate``, a path that libvirt's
stock AppArmor profiles already let the daemon execute (``/etc/libvirt/hooks/**
rmix``, inherit: the hook stays in the daemon's profile).  A symlink would not
do: AppArmor decides on the link's target.

The proof: the new copy is first staged as
``qemu.d/.vfmigrate-staging/vfmigrate`` (libvirt runs only regular executable
files directly in qemu.d, so it ignores a directory), then executed with
``--self-test`` the way the daemon would execute it:

* AppArmor, confined daemon: ``aa-exec -p PROFILE -- /bin/sh -c 'exec "$0"
  --self-test' HOOK``.  The shell runs in the daemon's profile and its exec of
  the hook is checked against that profile's rules, as libvirt's exec is.
  (``aa-exec -p PROFILE -- HOOK`` alone would not prove it: the kernel grants a
  change_onexec from an unconfined caller without checking the file against
  the new profile, security/apparmor/domain.c ``profile_onexec``.)
* no LSM, an unconfined daemon, or SELinux (its labels are not checked yet):
  the hook is executed directly.

Only if every proof passes is the staged copy renamed over the hook's path.
Kernel and process state come from roots (``procfs_root``, ``securityfs_root``,
``sysfs_root``) and commands run through an injected runner, so tests use fake
trees and a fake runner.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from .errors import Refused

HOOK_NAME = "vfmigrate"
STAGING_DIR = ".vfmigrate-staging"
PACKAGED_HOOK = Path("/usr/libexec/vfmigrate/qemu-hook")
HOOKS_DIR = Path("/etc/libvirt/hooks")
#: A line of hooks/qemu: a file in qemu.d that holds it is vfmigrate's copy.
MARKER = b"# vfmigrate-hook:"
#: libvirt's daemons that run qemu hooks: the modular one first.
DAEMONS = ("virtqemud", "libvirtd")
#: The environment libvirt gives hooks (virCommandAddEnvPassCommon), reduced
#: to what matters here.
HOOK_ENVIRONMENT = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
EXEC_DENIED = 126   # what a shell exits with when exec(2) fails with EACCES
PROOF_TIMEOUT = 120.0


class HookNotOurs(Refused):
    msg_fmt = ("{path} is not vfmigrate's hook ({what}): move it away, then run "
               "'vfmigrate hook enable'")


@dataclass(frozen=True)
class Completed:
    """What a runner returns: a finished command."""

    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], Mapping[str, str]], Completed]


def run_command(argv: Sequence[str], env: Mapping[str, str]) -> Completed:
    """The real runner: no stdin (as ``--self-test`` needs none), output captured."""
    try:
        done = subprocess.run(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace",
                              timeout=PROOF_TIMEOUT)
    except FileNotFoundError as error:
        return Completed(127, "", f"{error.filename}: not found\n")
    except PermissionError as error:
        return Completed(EXEC_DENIED, "", f"{error.filename}: Permission denied\n")
    except subprocess.TimeoutExpired:
        return Completed(124, "", f"timed out after {PROOF_TIMEOUT:g} s\n")
    return Completed(done.returncode, done.stdout, done.stderr)


# -- what confines the daemon ---------------------------------------------------

@dataclass(frozen=True)
class Daemon:
    """One libvirt daemon that would run the qemu hook."""

    name: str                 # libvirtd or virtqemud
    pid: int | None           # None: not running (judged from its loaded profile)
    profile: str | None       # AppArmor profile name, None when unconfined
    mode: str | None          # enforce, complain, … (None when unconfined)

    @property
    def confined(self) -> bool:
        return self.profile is not None

    def describe(self) -> str:
        state = f"running as pid {self.pid}" if self.pid else "not running"
        if not self.confined:
            return f"{self.name} ({state}) is unconfined"
        return f"{self.name} ({state}) is confined by AppArmor profile {self.profile} ({self.mode})"


@dataclass(frozen=True)
class Confinement:
    """The host's LSMs and the daemon(s) whose confinement the hook must pass."""

    lsms: tuple[str, ...]
    apparmor: bool
    selinux: bool
    daemons: tuple[Daemon, ...]

    def summary(self) -> str:
        if self.apparmor:
            lsm = "AppArmor is active"
        elif self.selinux:
            lsm = "SELinux is active"
        else:
            lsm = "no LSM confines processes" if not self.lsms else \
                f"no AppArmor or SELinux (LSMs: {','.join(self.lsms)})"
        if not self.daemons:
            return f"{lsm}; no libvirt daemon runs and none has a loaded profile"
        return f"{lsm}; " + "; ".join(daemon.describe() for daemon in self.daemons)


def _selinux_file_label(path: Path) -> str | None:
    try:
        return os.getxattr(path, "security.selinux").decode(errors="replace")
    except OSError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _parse_label(text: str) -> tuple[str | None, str | None]:
    """``libvirtd (enforce)`` -> (libvirtd, enforce); ``unconfined`` -> (None, None)."""
    text = text.strip().rstrip("\x00").strip()
    if not text or text == "unconfined":
        return None, None
    if text.endswith(")") and " (" in text:
        name, mode = text[:-1].rsplit(" (", 1)
        return name, mode
    return text, "enforce"


class ConfinementProbe:
    """Reads the LSM state and the libvirt daemons' confinement from the roots."""

    def __init__(self, *, procfs_root: Path = Path("/proc"),
                 securityfs_root: Path = Path("/sys/kernel/security"),
                 sysfs_root: Path = Path("/sys"),
                 read_file_label: Callable[[Path], str | None] | None = None) -> None:
        self.procfs_root = Path(procfs_root)
        self.securityfs_root = Path(securityfs_root)
        self.sysfs_root = Path(sysfs_root)
        self.read_file_label = read_file_label or _selinux_file_label

    def selinux_type(self, path: Path) -> str | None:
        """The SELinux type of a file (``virt_hook_t``), None if it has no label."""
        label = self.read_file_label(Path(path))
        parts = (label or "").strip("\0\n").split(":")
        return parts[2] if len(parts) >= 3 else None

    def lsms(self) -> tuple[str, ...]:
        text = _read(self.securityfs_root / "lsm")
        return tuple(name for name in (text or "").strip().split(",") if name)

    def apparmor_enabled(self, lsms: tuple[str, ...]) -> bool:
        if lsms:
            return "apparmor" in lsms
        return (_read(self.sysfs_root / "module/apparmor/parameters/enabled") or "").strip() \
            == "Y"

    def loaded_profiles(self) -> dict[str, str]:
        """Profile name -> mode, from securityfs (``libvirtd (enforce)`` lines)."""
        profiles: dict[str, str] = {}
        for line in (_read(self.securityfs_root / "apparmor/profiles") or "").splitlines():
            name, mode = _parse_label(line)
            if name is not None:
                profiles[name] = mode or "enforce"
        return profiles

    def running_daemons(self) -> dict[str, int]:
        """Daemon name -> lowest pid, for libvirtd/virtqemud processes."""
        found: dict[str, int] = {}
        try:
            entries = os.listdir(self.procfs_root)
        except OSError:
            return found
        for entry in sorted((e for e in entries if e.isdigit()), key=int):
            comm = (_read(self.procfs_root / entry / "comm") or "").strip()
            if comm in DAEMONS and comm not in found:
                found[comm] = int(entry)
        return found

    def label_of(self, pid: int) -> tuple[str | None, str | None]:
        for name in ("attr/apparmor/current", "attr/current"):
            text = _read(self.procfs_root / str(pid) / name)
            if text is not None:
                return _parse_label(text)
        return None, None

    def probe(self) -> Confinement:
        lsms = self.lsms()
        apparmor = self.apparmor_enabled(lsms)
        selinux = "selinux" in lsms
        running = self.running_daemons()
        profiles = self.loaded_profiles() if apparmor else {}
        daemons: list[Daemon] = []
        if running:
            # The running daemon serves qemu; virtqemud first (modular wins when both run).
            name = next(name for name in DAEMONS if name in running)
            profile, mode = self.label_of(running[name]) if apparmor else (None, None)
            daemons.append(Daemon(name, running[name], profile, mode))
        else:
            # Not running (socket activation): whichever daemon starts will run the hook
            # under its loaded profile; prove every one that is loaded.
            for name in DAEMONS:
                if name in profiles:
                    daemons.append(Daemon(name, None, name, profiles[name]))
        return Confinement(lsms, apparmor, selinux, tuple(daemons))


# -- the proof -------------------------------------------------------------------

@dataclass
class Proof:
    """The outcome of running a hook file's ``--self-test`` as a daemon would."""

    daemon: Daemon | None
    path: Path
    returncode: int
    lines: list[str] = field(default_factory=list)     # the self-test's report
    causes: list[str] = field(default_factory=list)    # one sentence with its fix each

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.causes

    def where(self) -> str:
        if self.daemon is None or not self.daemon.confined:
            who = self.daemon.name if self.daemon else "libvirt's daemon"
            return f"unconfined, as {who} runs hooks here"
        return (f"under {self.daemon.name}'s AppArmor profile {self.daemon.profile} "
                f"({self.daemon.mode})")


def local_rule(hooks_dir: Path) -> str:
    """The least AppArmor rule that lets a daemon run the hook (staged and in place)."""
    qemu_d = Path(os.path.realpath(hooks_dir / "qemu.d"))
    return f"{qemu_d}/{{,{STAGING_DIR}/}}{HOOK_NAME} rix,"


def proof_argv(daemon: Daemon | None, hook: Path) -> list[str]:
    if daemon is not None and daemon.confined:
        return ["aa-exec", "-p", daemon.profile, "--",
                "/bin/sh", "-c", 'exec "$0" --self-test', str(hook)]
    return [str(hook), "--self-test"]


def prove(hook: Path, confinement: Confinement, runner: Runner, *,
          hooks_dir: Path = HOOKS_DIR, environ: Mapping[str, str] | None = None,
          installed_path: Path | None = None) -> list[Proof]:
    """Run ``hook --self-test`` once per daemon as that daemon would run it.

    ``installed_path`` is where the hook is (or will be) enabled: messages name it.
    """
    env = dict(HOOK_ENVIRONMENT)
    env.update(environ or {})
    daemons: Sequence[Daemon | None] = confinement.daemons or (None,)
    proofs = []
    for daemon in daemons:
        done = runner(proof_argv(daemon, hook), env)
        proof = Proof(daemon, hook, done.returncode,
                      [line for line in done.stdout.splitlines() if line.strip()])
        if done.returncode != 0:
            proof.causes = _causes(done, daemon, hook, installed_path or hook, hooks_dir)
        proofs.append(proof)
    return proofs


def _causes(done: Completed, daemon: Daemon | None, hook: Path, installed: Path,
            hooks_dir: Path) -> list[str]:
    confined = daemon is not None and daemon.confined
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    if failed:   # the hook ran and says what it could not do
        hint = (f" (under {daemon.name}'s AppArmor profile: if it denied this, the kernel log "
                "names the path, 'journalctl -k | grep DENIED')") if confined else ""
        return [f"the hook's self-test failed: {line[4:].strip()}{hint}" for line in failed]
    last = " ".join(done.stderr.split())
    if done.returncode == 127 and confined and "aa-exec" in done.stderr:
        return ["aa-exec is missing, so the hook cannot be proven under "
                f"{daemon.name}'s AppArmor profile: install the apparmor package, then run "
                "'vfmigrate hook enable'"]
    denied = done.returncode == EXEC_DENIED or "Permission denied" in done.stderr
    if denied and confined:
        profile_file = f"/etc/apparmor.d/usr.sbin.{daemon.name}"
        if os.path.islink(installed):
            return [f"{daemon.name}'s AppArmor profile ({daemon.mode}) does not let it execute "
                    f"{installed}, a symlink that AppArmor judges by its target "
                    f"{os.path.realpath(installed)}: run 'vfmigrate hook enable' to replace "
                    "it by a copy"]
        return [f"{daemon.name}'s AppArmor profile ({daemon.mode}) does not let it execute "
                f"{installed}: allow it with '{local_rule(hooks_dir)}' in "
                f"/etc/apparmor.d/local/usr.sbin.{daemon.name}, reload with "
                f"'apparmor_parser -r {profile_file}', then run 'vfmigrate hook enable'"]
    if denied:
        return [f"{hook} cannot be executed ({last or 'permission denied'}): check that it "
                "is a root-owned 0755 file on a filesystem mounted without noexec, then run "
                "'vfmigrate hook enable'"]
    if done.returncode == 124:
        return [f"the hook's self-test did not finish: {last}; find what blocks it "
                "(the ledger's lock, journald) and run 'vfmigrate hook enable' again"]
    return [f"the hook's self-test exited with status {done.returncode}"
            + (f" ({last})" if last else "")
            + ": run it by hand to see why, e.g. "
            f"'{' '.join(proof_argv(daemon, hook))}'"]


# -- enabling ----------------------------------------------------------------------

def is_ours(path: Path, packaged: Path = PACKAGED_HOOK) -> bool:
    """A copy holding the marker line, or the old package's symlink to the program."""
    if path.is_symlink():
        return os.readlink(path) == str(packaged) or \
            os.path.realpath(path) == os.path.realpath(packaged)
    try:
        with open(path, "rb") as hook:
            head = hook.read(4096)
    except OSError:
        return False
    return any(line.startswith(MARKER) for line in head.splitlines())


def other_qemu_hooks(hooks_dir: Path) -> list[Path]:
    """Hooks libvirt would find at start besides vfmigrate's (hooks/qemu, qemu.d/*)."""
    candidates = [hooks_dir / "qemu"]
    try:
        candidates += sorted(path for path in (hooks_dir / "qemu.d").iterdir()
                             if path.name != HOOK_NAME)
    except OSError:
        pass
    found = []
    for path in candidates:
        try:
            info = path.stat()
        except OSError:
            continue
        if path.is_file() and info.st_mode & 0o111:
            found.append(path)
    return found


@dataclass
class EnableResult:
    enabled: bool
    target: Path
    confinement: Confinement
    proofs: list[Proof]
    restart_needed: tuple[str, ...] = ()   # running daemons that must restart
    replaced: str | None = None    # what was at the target before, if anything
    notes: list[str] = field(default_factory=list)

    @property
    def causes(self) -> list[str]:
        return [cause for proof in self.proofs for cause in proof.causes]

    def lines(self) -> list[str]:
        lines = [f"confinement: {self.confinement.summary()}"]
        for proof in self.proofs:
            verdict = "passed" if proof.passed else "FAILED"
            lines.append(f"the hook's self-test {verdict} {proof.where()}")
        if not self.enabled:
            lines.extend(f"cause: {cause}" for cause in self.causes)
            lines.append(f"hook disabled: nothing in {self.target.parent} runs vfmigrate; "
                         "fix what is named above and run 'vfmigrate hook enable'")
            return lines
        lines.append(f"hook enabled: {self.target}"
                     + (f" (replaced {self.replaced})" if self.replaced else ""))
        lines.extend(self.notes)
        for daemon in self.restart_needed:
            lines.append(f"restart {daemon} once, when no migration is running: it had no "
                         "qemu hook when it started, so it ignores the hook until then")
        return lines


class HookInstaller:
    """Enables and disables the hook copy in ``<hooks_dir>/qemu.d``."""

    def __init__(self, *, hooks_dir: Path = HOOKS_DIR, source: Path = PACKAGED_HOOK,
                 probe: ConfinementProbe | None = None, runner: Runner = run_command,
                 environ: Mapping[str, str] | None = None) -> None:
        self.hooks_dir = Path(hooks_dir)
        self.source = Path(source)
        self.probe = probe or ConfinementProbe()
        self.runner = runner
        self.environ = dict(environ or {})

    @property
    def target(self) -> Path:
        return self.hooks_dir / "qemu.d" / HOOK_NAME

    @property
    def staging(self) -> Path:
        return self.hooks_dir / "qemu.d" / STAGING_DIR

    def _what_is_there(self) -> str | None:
        target = self.target
        if target.is_symlink():
            return f"a symlink to {os.readlink(target)}"
        if target.exists():
            if not target.is_file():
                return "not a file"
            return "a copy" if is_ours(target, self.source) else "a file that is not vfmigrate's"
        return None

    def enable(self, *, restart_hint: bool = True) -> EnableResult:
        """Stage, prove and rename into place; on failure leave no hook.

        ``restart_hint``: say so when libvirt's daemon needs a restart to see the
        hook (nothing of vfmigrate's and no other qemu hook was there).
        """
        target = self.target
        before = self._what_is_there()
        if before is not None and not is_ours(target, self.source):
            raise HookNotOurs(path=target, what=before)
        confinement = self.probe.probe()
        restart_needed: tuple[str, ...] = ()
        if restart_hint and before is None and not other_qemu_hooks(self.hooks_dir):
            restart_needed = tuple(d.name for d in confinement.daemons if d.pid)
        with self._staged_copy() as staged:
            proofs = prove(staged, confinement, self.runner, hooks_dir=self.hooks_dir,
                           environ=self.environ, installed_path=target)
            if all(proof.passed for proof in proofs):
                os.replace(staged, target)
                _fsync_dir(target.parent)
                result = EnableResult(True, target, confinement, proofs,
                                      restart_needed=restart_needed, replaced=before)
                if confinement.selinux:
                    # A file made at run time inherits its directory's label; give it
                    # the one the policy names for its path.  Labels are not proven yet.
                    relabel = self.runner(["restorecon", "-F", str(target)], HOOK_ENVIRONMENT)
                    result.notes.append(
                        f"SELinux: relabelled {target} with restorecon" if relabel.returncode == 0
                        else f"SELinux: 'restorecon -F {target}' failed "
                             f"({' '.join(relabel.stderr.split()) or relabel.returncode}); "
                             "run it by hand")
                return result
        # Not proven: libvirt must not run a hook it may not be able to execute.
        if before is not None:
            target.unlink(missing_ok=True)
        return EnableResult(False, target, confinement, proofs, replaced=before)

    def _staged_copy(self) -> _staged_hook:
        content = self.source.read_bytes()
        if MARKER not in content:
            raise HookNotOurs(path=self.source, what="no vfmigrate-hook marker line")
        self.target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        return _staged_hook(self.staging, content)

    def disable(self) -> str:
        """Remove the hook if it is vfmigrate's; returns what was done."""
        target = self.target
        before = self._what_is_there()
        _remove_staging(self.staging)
        if before is None:
            return f"hook already disabled: {target} does not exist"
        if not is_ours(target, self.source):
            raise HookNotOurs(path=target, what=before)
        target.unlink()
        return f"hook disabled: removed {target} ({before})"

    def status(self) -> tuple[str, list[Proof], Confinement]:
        """What is at the hook's path, and the proof on it as installed.  With no hook
        there, the proof of the copy ``enable`` would install (staged, then removed), so
        that what would keep it disabled is named (none without the package's hook or
        without a qemu.d directory, which a diagnosis should not create)."""
        confinement = self.probe.probe()
        before = self._what_is_there()
        if before is None:
            if not (self.source.is_file() and self.target.parent.is_dir()):
                return "missing", [], confinement
            with self._staged_copy() as staged:
                return "missing", prove(staged, confinement, self.runner,
                                        hooks_dir=self.hooks_dir, environ=self.environ,
                                        installed_path=self.target), confinement
        if not os.access(self.target, os.X_OK):
            return before, [], confinement
        proofs = prove(self.target, confinement, self.runner, hooks_dir=self.hooks_dir,
                       environ=self.environ, installed_path=self.target)
        return before, proofs, confinement


class _staging_dir:
    """``qemu.d/.vfmigrate-staging``, locked against a concurrent enable, removed after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> Path:
        while True:
            try:
                self.path.mkdir(mode=0o755)
            except FileExistsError:
                pass
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:   # the enable before us removed it after our mkdir
                continue
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:   # the enable we waited for may have removed the directory meanwhile
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    return self.path
            except FileNotFoundError:
                pass
            os.close(self.fd)

    def __exit__(self, *exc_info) -> None:
        try:
            _remove_staging(self.path)
        finally:
            os.close(self.fd)


class _staged_hook(_staging_dir):
    """The staging directory holding a copy of the hook: its path while inside."""

    def __init__(self, path: Path, content: bytes) -> None:
        super().__init__(path)
        self.content = content

    def __enter__(self) -> Path:
        staged = super().__enter__() / HOOK_NAME
        _write_executable(staged, self.content)
        return staged


def _remove_staging(path: Path) -> None:
    try:
        for entry in path.iterdir():
            entry.unlink()
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def _write_executable(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o755)
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_causes(proofs: Sequence[Proof]) -> Iterator[str]:
    for proof in proofs:
        yield from proof.causes
