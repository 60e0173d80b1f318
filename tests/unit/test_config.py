from __future__ import annotations

from pathlib import Path

import pytest

from vfmigrate import config as configuration
from vfmigrate.errors import ConfigMissing, ConfigSyntaxError

FULL = """\
# vfmigrate on compute-7
[vfmigrate]
state_dir = /var/lib/vfmigrate-test    # ledger here
sysfs_root = /sys
libvirt_run_dir = /run/libvirt/qemu
reservation_timeout = 120
lock_timeout = 2.5

[network physnet1]
pfs = ens1f0, 0000:3b:00.1
deny_vfs = 0000:3b:02.0
; VFs 0-3 only
allow_vfs = 0000:3b:01.[0-3]

[network physnet2]
pfs = enp175s0f0np0
"""


def test_full_config_is_parsed():
    config = configuration.parse(FULL, Path("/etc/vfmigrate/vfmigrate.conf"))
    assert config.state_dir == "/var/lib/vfmigrate-test"
    assert config.ledger_path == "/var/lib/vfmigrate-test/ledger.sqlite3"
    assert (config.reservation_timeout, config.lock_timeout) == (120.0, 2.5)
    physnet1 = config.networks["physnet1"]
    assert physnet1.pfs == ("ens1f0", "0000:3b:00.1")
    assert physnet1.deny_vfs == ("0000:3b:02.0",)
    assert physnet1.allow_vfs == ("0000:3b:01.[0-3]",)
    assert config.networks["physnet2"].pfs == ("enp175s0f0np0",)


def test_defaults_for_an_empty_file():
    config = configuration.parse("", Path("x.conf"))
    assert config.state_dir == "/var/lib/vfmigrate"
    assert config.sysfs_root == "/sys"
    assert config.libvirt_run_dir == "/run/libvirt/qemu"
    assert config.networks == {}


@pytest.mark.parametrize("text, line, key, problem", [
    ("pfs = x\n", 1, "pfs", "setting outside a section"),
    ("[vfmigrate]\nstate_dir\n", 2, "state_dir", "expected 'key = value'"),
    ("[network a]\npfs = e0\n[network a]\npfs = e1\n", 3, "a", "network defined twice"),
    ("[network a]\npfs = e0\n[network b]\npfs = e0\n", 4, "pfs", "already in network 'a'"),
    ("[network a b]\n", 1, "[network a b]", "unknown section"),
    ("[network ../x]\n", 1, "../x", "network name must be"),
    ("[network a]\npfs = e0\npfs = e1\n", 3, "pfs", "set twice (first on line 2)"),
    ("[network a]\npfs = e0\ndeny_vfs = /etc/passwd\n", 3, "deny_vfs", "is not a PCI address"),
    ("[network a]\npfs =\n", 2, "pfs", "empty list"),
    ("[vfmigrate]\nlock_timeout = -1\n", 2, "lock_timeout", "must be seconds"),
    # The same PF written in two cases is one PF (the overlap by netdev is Inventory's).
    ("[network a]\npfs = 0000:3B:00.0\n[network b]\npfs = 0000:3b:00.0\n", 4, "pfs",
     "PF 0000:3b:00.0 is already in network 'a'"),
    # Digits Python's float() reads but an admin would not write: Arabic-Indic, '_'.
    ("[vfmigrate]\nlock_timeout = \u0661\u0662\n", 2, "lock_timeout", "must be seconds"),
    ("[vfmigrate]\nreservation_timeout = 1_0\n", 2, "reservation_timeout", "must be seconds"),
    ("[vfmigrate]\nreservation_timeout = nan\n", 2, "reservation_timeout", "must be seconds"),
])
def test_errors_name_file_line_and_key(text, line, key, problem):
    with pytest.raises(ConfigSyntaxError) as caught:
        configuration.parse(text, Path("/etc/vfmigrate/vfmigrate.conf"))
    error = caught.value
    assert (error.line, error.key) == (line, key)
    assert problem in error.problem
    assert str(error).startswith(f"/etc/vfmigrate/vfmigrate.conf:{line}: {key}: ")
    assert "\n" not in str(error)


def test_path_precedence_flag_env_default(tmp_path):
    assert configuration.config_path("/a.conf", {"VFMIGRATE_CONFIG": "/b.conf"}) == "/a.conf"
    assert configuration.config_path(None, {"VFMIGRATE_CONFIG": "/b.conf"}) == "/b.conf"
    assert configuration.config_path(None, {}) == configuration.DEFAULT_CONFIG_PATH
    with pytest.raises(ConfigMissing) as caught:
        configuration.load(tmp_path / "absent.conf")
    assert caught.value.path == str(tmp_path / "absent.conf")
