"""vfmigrate's configuration file, ``/etc/vfmigrate/vfmigrate.conf``.

An INI-style file with one ``[vfmigrate]`` section of host settings and one
``[network NAME]`` section per network::

    [vfmigrate]
    state_dir = /var/lib/vfmigrate        # ledger lives here (made 0700)
    sysfs_root = /sys                     # where PFs and VFs are read from
    libvirt_run_dir = /run/libvirt/qemu   # status XML of running guests
    reservation_timeout = 300             # s an incoming claim lives without its guest
    lock_timeout = 10                     # s to wait for the ledger lock
    reset_timeout = 10                    # s the listener waits for one VF reset
    libvirt_uri = qemu:///system          # the listener's and CLI's libvirt
    vf_reset = netlink                    # or "none": leave released VFs as they are
    allow_stand_ins = no                  # testbeds only: virtio NICs standing in for VFs

    [network physnet1]                    # the label, the same on every host
    pfs = ens1f0, 0000:3b:00.1            # PFs by netdev name or PCI address
    allow_vfs = 0000:3b:02.*              # optional: only these VFs (glob patterns)
    deny_vfs = 0000:3b:02.0               # optional: never these VFs
    numa_affinity = preferred             # or required, none (vfmigrate.numa)
    pf_spread = preferred                 # or required: keep a guest's VFs on several PFs
    settings_parity = trust               # or required, preferred (vfmigrate.vfsettings)

Every problem is reported as one :class:`ConfigSyntaxError` naming file, line
and key.  The path comes from ``--config``, else ``$VFMIGRATE_CONFIG``, else
the default.  Paths in a :class:`Config` are absolute path strings (this
module is on the hook's import-light path: no pathlib).
"""

from __future__ import annotations

import os

from . import lexical
from .errors import ConfigMissing, ConfigSyntaxError
from .numa import AFFINITY_POLICIES, DEFAULT_AFFINITY
from .pci import PciAddress, is_pci_address
from .records import record
from .vfsettings import DEFAULT_PARITY, PARITY_POLICIES

DEFAULT_CONFIG_PATH = "/etc/vfmigrate/vfmigrate.conf"
CONFIG_ENV = "VFMIGRATE_CONFIG"

SPREAD_POLICIES = ("required", "preferred")
DEFAULT_SPREAD = "preferred"

_LABEL_CHARACTERS = lexical.ASCII_ALNUM | frozenset("_.:-")
_NETDEV_CHARACTERS = lexical.ASCII_ALNUM | frozenset("_.:@-")
_VF_PATTERN_CHARACTERS = lexical.HEX_DIGITS | frozenset(":.*?[]-")
_URI_SCHEME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+")


def is_network_label(name: str) -> bool:
    """``[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}``"""
    return name[:1] in lexical.ASCII_ALNUM and lexical.made_of(name, _LABEL_CHARACTERS, 1, 64)


class NetworkConfig(record("NetworkConfig",
                           "name pfs allow_vfs deny_vfs numa_affinity pf_spread "
                           "settings_parity")):
    """One ``[network NAME]``: PF specs (netdev names or PCI addresses), VF globs, how
    the guest's NUMA nodes weigh in the choice of a VF, whether VFs that sat on
    different PFs on the source must do so here (``required``) or should
    (``preferred``: a warning where they cannot), and which of the VF settings
    recorded on the source must be applied here for the guest to arrive (``trust``:
    trust where it was on; ``required``: all; ``preferred``: none, a warning)."""

    __slots__ = ()

    def __new__(cls, name: str, pfs: tuple[str, ...], allow_vfs: tuple[str, ...] = (),
                deny_vfs: tuple[str, ...] = (), numa_affinity: str = DEFAULT_AFFINITY,
                pf_spread: str = DEFAULT_SPREAD,
                settings_parity: str = DEFAULT_PARITY) -> NetworkConfig:
        return super().__new__(cls, name, pfs, allow_vfs, deny_vfs, numa_affinity,
                               pf_spread, settings_parity)


class Config:
    """The whole file; ``networks`` maps each label to its NetworkConfig."""

    __slots__ = ("path", "state_dir", "sysfs_root", "libvirt_run_dir", "reservation_timeout",
                 "lock_timeout", "libvirt_uri", "vf_reset", "allow_stand_ins", "networks",
                 "reset_timeout")

    def __init__(self, path: str, state_dir: str = "/var/lib/vfmigrate",
                 sysfs_root: str = "/sys", libvirt_run_dir: str = "/run/libvirt/qemu",
                 reservation_timeout: float = 300.0, lock_timeout: float = 10.0,
                 libvirt_uri: str = "qemu:///system", vf_reset: str = "netlink",
                 allow_stand_ins: bool = False, networks: dict | None = None,
                 reset_timeout: float = 10.0) -> None:
        self.path, self.state_dir, self.sysfs_root = path, state_dir, sysfs_root
        self.libvirt_run_dir = libvirt_run_dir
        self.reservation_timeout, self.lock_timeout = reservation_timeout, lock_timeout
        self.libvirt_uri, self.vf_reset = libvirt_uri, vf_reset
        self.allow_stand_ins = allow_stand_ins
        self.networks = {} if networks is None else networks
        self.reset_timeout = reset_timeout

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and all(
            getattr(self, field) == getattr(other, field) for field in self.__slots__)

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{field}={getattr(self, field)!r}"
                                     for field in self.__slots__) + ")"

    @property
    def ledger_path(self) -> str:
        return os.path.join(self.state_dir, "ledger.sqlite3")

    @property
    def running_cache_path(self) -> str:
        """What running guests hold, per status file (:mod:`vfmigrate.running`)."""
        return os.path.join(self.state_dir, "running-guests.cache")


def config_path(explicit: str | os.PathLike | None = None,
                environ: "Mapping[str, str]" = os.environ) -> str:
    """Which config file to read: explicit flag, then environment, then default."""
    if explicit:
        return os.fspath(explicit)
    if environ.get(CONFIG_ENV):
        return environ[CONFIG_ENV]
    return DEFAULT_CONFIG_PATH


def load(path: str | os.PathLike) -> Config:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as config_file:
            text = config_file.read()
    except FileNotFoundError:
        raise ConfigMissing(path=path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigSyntaxError(path=path, line=0, key="-",
                                problem=f"cannot read: {_reason(error)}") from None
    return parse(text, path)


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


def parse(text: str, path: str | os.PathLike) -> Config:
    parser = _Parser(os.fspath(path))
    for number, line in enumerate(text.splitlines(), start=1):
        parser.feed(number, line)
    return parser.finish()


_HOST_KEYS = {"state_dir", "sysfs_root", "libvirt_run_dir", "reservation_timeout",
              "lock_timeout", "reset_timeout", "libvirt_uri", "vf_reset", "allow_stand_ins"}
_BOOLEANS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}
_VF_RESET_MODES = ("netlink", "none")
_NETWORK_KEYS = {"pfs", "allow_vfs", "deny_vfs", "numa_affinity", "pf_spread",
                 "settings_parity"}
# A network's choice settings: the values each may take, and its default.
_NETWORK_POLICIES = {"numa_affinity": (AFFINITY_POLICIES, DEFAULT_AFFINITY),
                     "pf_spread": (SPREAD_POLICIES, DEFAULT_SPREAD),
                     "settings_parity": (PARITY_POLICIES, DEFAULT_PARITY)}


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.host: dict[str, tuple[int, str]] = {}
        self.networks: dict[str, dict[str, tuple[int, str]]] = {}
        self.network_lines: dict[str, int] = {}
        self.section: dict[str, tuple[int, str]] | None = None
        self.section_keys: set[str] = set()

    def fail(self, line: int, key: str, problem: str) -> ConfigSyntaxError:
        return ConfigSyntaxError(path=self.path, line=line, key=key, problem=problem)

    def feed(self, number: int, raw: str) -> None:
        line = _strip_comment(raw).strip()
        if not line:
            return
        if line.startswith("["):
            self._section(number, line)
            return
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise self.fail(number, key or "-", "expected 'key = value'")
        if self.section is None:
            raise self.fail(number, key, "setting outside a section; put it under [vfmigrate]")
        if key not in self.section_keys:
            raise self.fail(number, key, "unknown key; expected one of "
                            + ", ".join(sorted(self.section_keys)))
        if key in self.section:
            raise self.fail(number, key, f"set twice (first on line {self.section[key][0]})")
        self.section[key] = (number, value.strip())

    def _section(self, number: int, line: str) -> None:
        if not line.endswith("]"):
            raise self.fail(number, line, "section header must end with ']'")
        words = line[1:-1].split()
        if words == ["vfmigrate"]:
            self.section, self.section_keys = self.host, _HOST_KEYS
            return
        if len(words) == 2 and words[0] == "network":
            name = words[1]
            if not is_network_label(name):
                raise self.fail(number, name, "network name must be letters, digits, "
                                "'_', '.', ':' or '-' (at most 64)")
            if name in self.networks:
                raise self.fail(number, name, "network defined twice "
                                f"(first on line {self.network_lines[name]})")
            self.networks[name] = {}
            self.network_lines[name] = number
            self.section, self.section_keys = self.networks[name], _NETWORK_KEYS
            return
        raise self.fail(number, line, "unknown section; expected [vfmigrate] or [network NAME]")

    def finish(self) -> Config:
        settings: dict[str, object] = {}
        for key in ("state_dir", "sysfs_root", "libvirt_run_dir"):
            if key in self.host:
                number, value = self.host[key]
                if not value.startswith("/"):
                    raise self.fail(number, key, f"must be an absolute path, got {value!r}")
                settings[key] = os.path.normpath(value)
        for key in ("reservation_timeout", "lock_timeout", "reset_timeout"):
            if key in self.host:
                number, value = self.host[key]
                seconds = float(value) if lexical.is_decimal_seconds(value) else -1.0
                if not 0 < seconds <= 86400:
                    raise self.fail(number, key, f"must be seconds between 0 and 86400, got {value!r}")
                settings[key] = seconds
        if "libvirt_uri" in self.host:
            number, value = self.host["libvirt_uri"]
            scheme, separator, rest = value.partition("://")
            if not (separator and lexical.made_of(scheme, _URI_SCHEME_CHARACTERS)
                    and not lexical.has_space(rest)):
                raise self.fail(number, "libvirt_uri", f"{value!r} is not a libvirt URI "
                                "like qemu:///system")
            settings["libvirt_uri"] = value
        if "vf_reset" in self.host:
            number, value = self.host["vf_reset"]
            if value not in _VF_RESET_MODES:
                raise self.fail(number, "vf_reset", f"must be one of {', '.join(_VF_RESET_MODES)}")
            settings["vf_reset"] = value
        if "allow_stand_ins" in self.host:
            number, value = self.host["allow_stand_ins"]
            if value.lower() not in _BOOLEANS:
                raise self.fail(number, "allow_stand_ins", "must be yes or no")
            settings["allow_stand_ins"] = _BOOLEANS[value.lower()]
        networks = {}
        owner_of_pf: dict[str, str] = {}
        for name, section in self.networks.items():
            if "pfs" not in section:
                raise self.fail(self.network_lines[name], "pfs",
                                f"network '{name}' names no PFs; add 'pfs = NETDEV or PCI address'")
            number, value = section["pfs"]
            pfs = _split_list(value)
            if not pfs:
                raise self.fail(number, "pfs", "empty list")
            for pf in pfs:
                if not (is_pci_address(pf) or _is_netdev_name(pf)):
                    raise self.fail(number, "pfs", f"{pf!r} is neither a netdev name nor a "
                                    "PCI address like 0000:3b:00.0")
                # An address is compared in its canonical form; a PF named by netdev in
                # one network and by address in another is found by Inventory (sysfs).
                key = str(PciAddress.parse(pf)) if is_pci_address(pf) else pf
                if key in owner_of_pf:
                    raise self.fail(number, "pfs", f"PF {key} is already in network "
                                    f"'{owner_of_pf[key]}'")
                owner_of_pf[key] = name
            patterns = {}
            for key in ("allow_vfs", "deny_vfs"):
                if key in section:
                    number, value = section[key]
                    patterns[key] = tuple(_split_list(value))
                    for pattern in patterns[key]:
                        if not lexical.made_of(pattern, _VF_PATTERN_CHARACTERS, 1, 32):
                            raise self.fail(number, key, f"{pattern!r} is not a PCI address "
                                            "or glob pattern like 0000:3b:02.*")
            policies = {}
            for key, (allowed, default) in _NETWORK_POLICIES.items():
                number, policies[key] = section.get(key, (0, default))
                if policies[key] not in allowed:
                    raise self.fail(number, key, f"must be one of {', '.join(allowed)}")
            networks[name] = NetworkConfig(name=name, pfs=tuple(pfs), **patterns, **policies)
        return Config(path=self.path, networks=networks, **settings)


def _strip_comment(line: str) -> str:
    stripped = line.lstrip()
    if stripped.startswith(("#", ";")):
        return ""
    for marker in (" #", "\t#", " ;", "\t;"):
        index = line.find(marker)
        if index >= 0:
            line = line[:index]
    return line


def _split_list(value: str) -> list[str]:
    return value.replace(",", " ").split()


def _is_netdev_name(name: str) -> bool:
    return lexical.made_of(name, _NETDEV_CHARACTERS, 1, 15) and name not in (".", "..")
