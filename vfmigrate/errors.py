"""The one exception hierarchy of vfmigrate, and its mapping to exit codes.

Every error carries the fields that describe it (``NoFreeVF.network``,
``ConfigSyntaxError.line`` …) and renders to a single line that says what was
wrong and what to do.  Executables turn an error into an exit code with
:func:`exit_code_for` and nowhere else.

Exit codes (hook and CLI):

====  =====================================================================
0     success
1     refused: the operation cannot proceed on this host (no free VF, VF
      taken, unknown network, unlabelled device, vfmigrate not configured)
2     usage: wrong arguments
3     bad input: the domain XML is malformed, unsafe, too large or not a
      domain
4     configuration: the config file is missing or invalid
5     host state: sysfs or the ledger cannot be read or written
6     libvirt: the libvirt API failed (CLI and listener only)
70    internal error (a bug): details go to the journal
====  =====================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 70


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``1 VF``, ``2 VFs``: a count as an admin writes it."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


class VfmigrateError(Exception):
    """Base class.  Subclasses set ``msg_fmt``; keyword fields fill it in."""

    msg_fmt = "vfmigrate failed"

    def __init__(self, **fields: object) -> None:
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)
        super().__init__(self.msg_fmt.format(**fields))

    @property
    def message(self) -> str:
        return str(self)


# -- refused (exit 1) -------------------------------------------------------

class Refused(VfmigrateError):
    """The request is valid but this host cannot honour it."""


class NoFreeVF(Refused):
    """Fields: ``network``; ``total`` VFs in it, ``unavailable`` of them claimed by or in
    use by other guests, ``own`` already given to this guest's other devices in the same
    call, ``absent`` missing from sysfs."""

    msg_fmt = "no free VF in network '{network}' on this host ({counts})"

    def __init__(self, *, network: str, total: int, unavailable: int, own: int = 0,
                 absent: int = 0) -> None:
        super().__init__(network=network, total=total, unavailable=unavailable, own=own,
                         absent=absent, counts=vf_counts(counted(total, "VF"), unavailable,
                                                         own, absent))


def vf_counts(total: str, unavailable: int, own: int, absent: int = 0) -> str:
    """``8 VFs, 3 claimed or in use, 1 already given to this guest's other device``:
    why a refused guest found no VF among ``total`` (already written out)."""
    counts = [total]
    if unavailable:
        counts.append(f"{unavailable} claimed or in use")
    if own:
        counts.append(f"{own} already given to this guest's other "
                      + ("device" if own == 1 else "devices"))
    if absent:
        counts.append(f"{absent} missing from sysfs")
    return ", ".join(counts)


class UnknownNetwork(Refused):
    msg_fmt = ("guest '{domain}' needs network '{network}' for {device}, which this host "
               "does not have (configured: {configured}); add it to {config_path} "
               "or migrate the guest elsewhere")


class UnlabelledDevice(Refused):
    msg_fmt = ("{device} of guest '{domain}' has no network label and this host has "
               "{count} networks ({configured}); label it on the source with "
               "'vfmigrate tag {domain} --network NAME'")


class VFTaken(Refused):
    msg_fmt = ("VF {vf} named by guest '{domain}' is {holder}; "
               "give the guest another VF, or stop the other guest first")


class NotConfigured(Refused):
    msg_fmt = ("guest '{domain}' holds {devices} but vfmigrate is not "
               "configured on this host ({config_path} not found); "
               "configure its networks or remove the hook")

    def __init__(self, *, domain: str, count: int, config_path: object) -> None:
        super().__init__(domain=domain, count=count, config_path=config_path,
                         devices=counted(count, "VF device"))


# -- usage (exit 2) ---------------------------------------------------------

class UsageError(VfmigrateError):
    msg_fmt = "{problem}"


# -- bad input (exit 3) -----------------------------------------------------

class BadInput(VfmigrateError):
    """Input from outside (domain XML) is not acceptable."""


class BadDomainXML(BadInput):
    msg_fmt = "domain XML rejected: {problem}"


# -- configuration (exit 4) -------------------------------------------------

class ConfigError(VfmigrateError):
    pass


class ConfigMissing(ConfigError):
    msg_fmt = ("config file {path} not found; create it (see 'man vfmigrate') "
               "or point VFMIGRATE_CONFIG / --config at one")


class ConfigSyntaxError(ConfigError):
    msg_fmt = "{path}:{line}: {key}: {problem}"


# -- host state (exit 5) ----------------------------------------------------

class HostStateError(VfmigrateError):
    pass


class SysfsError(HostStateError):
    msg_fmt = "cannot read sysfs at {path}: {problem}; check sysfs_root and the PFs in the config"


class LedgerError(HostStateError):
    msg_fmt = "ledger {path}: {problem}"


class LedgerBusy(LedgerError):
    msg_fmt = ("ledger {path} stayed locked for {timeout:g} s; another vfmigrate process "
               "holds it: retry, or find it with 'fuser {path}'")


class LedgerCorrupt(LedgerError):
    msg_fmt = ("ledger {path} is unreadable ({problem}); move it aside and run "
               "'vfmigrate reconcile' to rebuild it from the running guests")


# -- libvirt (exit 6) -------------------------------------------------------

class LibvirtFailure(VfmigrateError):
    msg_fmt = "libvirt: {operation} failed: {problem}"


_EXIT_CODES: tuple[tuple[type[VfmigrateError], int], ...] = (
    (Refused, 1),
    (UsageError, 2),
    (BadInput, 3),
    (ConfigError, 4),
    (HostStateError, 5),
    (LibvirtFailure, 6),
)


def exit_code_for(error: BaseException) -> int:
    """The process exit code for ``error``; anything unexpected is a bug (70)."""
    for error_class, code in _EXIT_CODES:
        if isinstance(error, error_class):
            return code
    return EXIT_INTERNAL
