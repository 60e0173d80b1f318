"""vfmigrate's SELinux module (packaging/selinux/vfmigrate.cil) compiled with secilc
against stand-in base policies, and the rules of the result read back with setools.

What this proves: the CIL is valid, it grants exactly the rules packaging/README.md
("SELinux") argues for, each domain's rules are dropped (not an error) on a policy
without that domain or type, and it labels /var/lib/vfmigrate.  What it cannot prove:
that Fedora's real policy needs no more (that is argued from the policy, not tested
on an SELinux host).  The stand-in bases declare only the names the module uses.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "packaging/selinux/vfmigrate.cil"
SECILC = shutil.which("secilc", path="/usr/sbin:/usr/bin:/sbin:/bin")
setools = pytest.importorskip(
    "setools", reason="python3-setools is not installed (tests/install-deps should)")
pytestmark = pytest.mark.skipif(
    SECILC is None, reason="secilc is not installed (Debian package secilc; "
                           "tests/install-deps should install it)")

# A base policy as small as secilc accepts, with the names Fedora's policy gives
# what the module uses (virt.te, files.te), each removable by name.
_BASE = {
    "core": """
        (class file (getattr open read map execute execute_no_trans ioctl lock create
                     setattr write append rename link unlink entrypoint))
        (class dir (getattr open search create setattr read write link unlink rename
                    add_name remove_name reparent rmdir lock ioctl))
        (classorder (file dir))
        (sid kernel) (sidorder (kernel))
        (user system_u) (role system_r) (role object_r)
        (userrole system_u system_r) (userrole system_u object_r)
        (sensitivity s0) (sensitivityorder (s0)) (category c0) (categoryorder (c0))
        (sensitivitycategory s0 (c0))
        (userlevel system_u (s0)) (userrange system_u ((s0) (s0 (c0))))
        (type kernel_t) (roletype system_r kernel_t)
        (sidcontext kernel (system_u system_r kernel_t ((s0) (s0))))
        (allow kernel_t self (file (read)))
        (mls true) (handleunknown allow)
        (typeattribute file_type) (type var_t) (type var_lib_t)""",
    "non_security_file_type": "(typeattribute non_security_file_type)",
    "non_auth_file_type": "(typeattribute non_auth_file_type)",
    "virtd_t": "(type virtd_t) (roletype system_r virtd_t)",
    "virtqemud_t": "(type virtqemud_t) (roletype system_r virtqemud_t)",
    "virt_hook_t": "(type virt_hook_t)",
}
EXEC = {"getattr", "open", "read", "map", "execute", "execute_no_trans", "ioctl", "lock"}
SEARCH = {"getattr", "open", "search"}
MANAGE_DIRS = {"create", "open", "getattr", "setattr", "read", "write", "link", "unlink",
               "rename", "search", "add_name", "remove_name", "reparent", "rmdir", "lock",
               "ioctl"}
MANAGE_FILES = {"create", "open", "getattr", "setattr", "read", "write", "append", "rename",
                "link", "unlink", "ioctl", "lock", "map"}


def _compile(tmp_path: Path, *, without: tuple[str, ...] = ()):
    base = tmp_path / "base.cil"
    base.write_text("\n".join(text for name, text in _BASE.items() if name not in without))
    policy, contexts = tmp_path / "policy.bin", tmp_path / "file_contexts"
    result = subprocess.run([SECILC, "-M", "true", "-o", str(policy), "-f", str(contexts),
                             str(base), str(MODULE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = {}
    for rule in setools.TERuleQuery(setools.SELinuxPolicy(str(policy)),
                                    ruletype=["allow"]).results():
        if str(rule.source) != "kernel_t":
            rules[(str(rule.source), str(rule.target), str(rule.tclass))] = \
                {str(p) for p in rule.perms}
    return rules, contexts.read_text()


def _granted(domain: str) -> dict:
    return {(domain, "virt_hook_t", "file"): EXEC,
            (domain, "var_t", "dir"): SEARCH,
            (domain, "var_lib_t", "dir"): SEARCH,
            (domain, "vfmigrate_var_lib_t", "dir"): MANAGE_DIRS,
            (domain, "vfmigrate_var_lib_t", "file"): MANAGE_FILES}


def test_on_a_policy_with_both_daemons_it_grants_exactly_the_argued_rules(tmp_path):
    rules, contexts = _compile(tmp_path)
    assert rules == {**_granted("virtqemud_t"), **_granted("virtd_t")}
    assert contexts.splitlines() == [
        "/var/lib/vfmigrate(/.*)?\tsystem_u:object_r:vfmigrate_var_lib_t:s0"]


def test_without_the_modular_daemon_or_virt_hook_t_it_still_loads(tmp_path):
    """A pre-2024 policy: no virt_hook_t (the hook is then virt_etc_t, libvirtd's
    unconfined); a policy without virtqemud_t: only virtd_t's rules."""
    rules, _ = _compile(tmp_path, without=("virtqemud_t", "virt_hook_t"))
    assert rules == {key: perms for key, perms in _granted("virtd_t").items()
                     if key[1] != "virt_hook_t"}


def test_without_the_file_attributes_of_fedora_it_still_loads(tmp_path):
    rules, contexts = _compile(tmp_path, without=("non_security_file_type",
                                                  "non_auth_file_type", "virtd_t"))
    assert rules == _granted("virtqemud_t")
    assert "vfmigrate_var_lib_t" in contexts
