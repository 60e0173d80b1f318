"""Give an arriving guest's VFs the settings they had on the source.

The hook calls :func:`apply_on_arrival` on the destination once it has chosen
the VFs (``migrate``/``restore``), before libvirt starts the incoming QEMU: the
guest cannot use a VF before it has its settings.  Only guests whose metadata
records settings (:mod:`vfmigrate.vfsettings`) get here, so only they pay for
importing netlink.  A setting the destination cannot apply refuses the arrival
where the network's ``settings_parity`` says so (:func:`vfsettings.must_apply`)
and is otherwise returned as a warning; a refusal leaves the VFs to be reset
with the released claims.
"""

from __future__ import annotations

from . import vfsettings
from .errors import Refused


class SettingsNotApplied(Refused):
    msg_fmt = ("guest '{domain}' had {wanted} on its VF in network '{network}' on the "
               "source, and PF {pf} of this host cannot give VF {vf} {failed} ({problem}) "
               "while the network has settings_parity = {policy}; move the guest to a host "
               "whose PF driver supports it, or set settings_parity = preferred to let it "
               "arrive without")


class Unapplied:
    """Settings the destination could not give one VF, and why."""

    __slots__ = ("device", "vf", "wanted", "failed", "policy")

    def __init__(self, device, vf, wanted: dict[str, str], failed: dict[str, str],
                 policy: str) -> None:
        self.device, self.vf, self.wanted, self.failed = device, vf, wanted, failed
        self.policy = policy

    def sentence(self) -> str:
        problems = "; ".join(sorted(set(self.failed.values())))
        missing = {name: self.wanted[name] for name in self.failed}
        return (f"VF {self.vf.address} did not get the source's "
                f"{vfsettings.describe(missing)} ({problems}), and the guest arrives "
                f"without, as settings_parity = {self.policy} allows")


class Applied:
    __slots__ = ("device", "vf", "settings")

    def __init__(self, device, vf, settings: dict[str, str]) -> None:
        self.device, self.vf, self.settings = device, vf, settings


def wanted_settings(assignments) -> list[tuple[object, object, dict[str, str]]]:
    """(device, VF, settings) for each assignment whose device's entry records settings."""
    wanted = []
    for assignment in assignments:
        entry = assignment.device.entry or {}
        settings = vfsettings.recorded(entry, vfsettings.APPLIED_BEFORE_START)
        if settings:
            wanted.append((assignment.device, assignment.vf, settings))
    return wanted


def apply_on_arrival(config, domain, wanted, netlink_factory
                     ) -> tuple[list[Applied], list[Unapplied]]:
    """Apply each arriving VF's recorded settings (``wanted``, from
    :func:`wanted_settings`); raise :class:`SettingsNotApplied` where the network's
    policy requires one that failed."""
    applied: list[Applied] = []
    unapplied: list[Unapplied] = []
    if not wanted:
        return applied, unapplied
    netlink = netlink_factory() if config.vf_reset != "none" else None
    for device, vf, settings in wanted:
        if netlink is None:
            failed = {name: "vf_reset = none leaves VF settings to the admin"
                      for name in settings}
        else:
            try:
                failed = netlink.apply(vf, settings)
            except Exception as error:   # no netdev on the PF, no pyroute2, no socket …
                failed = {name: str(error) for name in settings}
        policy = config.networks[vf.network].settings_parity
        required = [name for name in failed if vfsettings.must_apply(name, settings, policy)]
        if required:
            raise SettingsNotApplied(domain=domain.name, wanted=vfsettings.describe(settings),
                                     vf=vf.address, pf=vf.pf,
                                     failed=vfsettings.describe(required),
                                     problem=failed[required[0]], policy=policy,
                                     network=vf.network)
        done = {name: value for name, value in settings.items() if name not in failed}
        if done:
            applied.append(Applied(device, vf, done))
        if failed:
            unapplied.append(Unapplied(device, vf, settings, failed, policy))
    return applied, unapplied
