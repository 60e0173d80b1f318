"""A VF's own settings on its PF, as they travel in vfmigrate's metadata.

libvirt carries a VF's MAC and VLAN tag; the other settings an admin gives a
VF on its PF (``ip link set PF vf N trust on max_tx_rate 100``) stay behind on
the source.  The source's listener records those that differ from the state
vfmigrate resets VFs to (:data:`RESET_STATE`, spoof checking per the host's
reset) as attributes of the guest's ``<vf>`` entry::

    <vf mac="52:54:00:6d:90:02" network="physnet1" trust="on" max-tx-rate="100"/>

The destination applies them to the VF it chose: :data:`APPLIED_BEFORE_START`
by the hook as the guest arrives (a driver that cannot apply one refuses the
migration or warns, per the network's ``settings_parity``), the VLAN priority
and protocol by the listener once libvirt has set the VLAN tag (libvirt's own
VLAN setting clears them).  Values are strings as written in the metadata; this
module only names, checks and describes them (netlink is :mod:`vfmigrate.vfnetlink`).
"""

from __future__ import annotations

from . import lexical

LINK_STATES = ("auto", "enable", "disable")
VLAN_PROTOCOLS = ("802.1Q", "802.1ad")
MAX_RATE_MBPS = 4294967295   # the kernel's u32

# Attribute -> what it means in a sentence, in the order they are recorded and described.
ATTRIBUTES = {"trust": "trust", "spoofchk": "spoof checking",
              "min-tx-rate": "minimum tx rate", "max-tx-rate": "maximum tx rate",
              "link-state": "link state", "vlan-qos": "VLAN priority",
              "vlan-proto": "VLAN protocol"}
APPLIED_BEFORE_START = ("trust", "spoofchk", "min-tx-rate", "max-tx-rate", "link-state")
APPLIED_AFTER_VLAN = ("vlan-qos", "vlan-proto")

# What a VF is reset to (spoofchk: the host's reset setting, which is on).
RESET_STATE = {"trust": "off", "spoofchk": "on", "min-tx-rate": "0", "max-tx-rate": "0",
               "link-state": "auto", "vlan-qos": "0", "vlan-proto": "802.1Q"}

PARITY_POLICIES = ("trust", "required", "preferred")
DEFAULT_PARITY = "trust"


def _is_rate(text: str) -> bool:
    return lexical.made_of(text, lexical.ASCII_DIGITS, 1, 10) and int(text) <= MAX_RATE_MBPS


# Checks of untrusted metadata attributes: (predicate, what is wrong otherwise).
CHECKS = {
    "trust": (lambda v: v in ("on", "off"), "is not on or off"),
    "spoofchk": (lambda v: v in ("on", "off"), "is not on or off"),
    "min-tx-rate": (_is_rate, "is not a rate in Mbit/s"),
    "max-tx-rate": (_is_rate, "is not a rate in Mbit/s"),
    "link-state": (lambda v: v in LINK_STATES, f"is not one of {', '.join(LINK_STATES)}"),
    "vlan-qos": (lambda v: len(v) == 1 and v in "01234567", "is not a VLAN priority 0-7"),
    "vlan-proto": (lambda v: v in VLAN_PROTOCOLS, f"is not one of {', '.join(VLAN_PROTOCOLS)}"),
}


def recorded(entry: dict[str, str], names=tuple(ATTRIBUTES)) -> dict[str, str]:
    """The settings an entry carries, among ``names`` (already checked by the parser)."""
    return {name: entry[name] for name in names if name in entry}


def differing(current: dict[str, str], reset_state: dict[str, str] = RESET_STATE
              ) -> dict[str, str]:
    """The settings of ``current`` (what the PF reports) that a reset would change."""
    return {name: value for name, value in current.items()
            if name in ATTRIBUTES and reset_state.get(name) != value}


def updated(recorded_settings: dict[str, str], current: dict[str, str]) -> dict[str, str]:
    """What to record once the PF reported ``current``: each setting it reports, where it
    differs from a reset VF; a setting it does not report (a driver that hides trust)
    is unknown, so what was recorded for it stays."""
    kept = {name: value for name, value in recorded_settings.items() if name not in current}
    kept.update(differing(current))
    return {name: kept[name] for name in ATTRIBUTES if name in kept}


def with_recorded(entry: dict[str, str], settings: dict[str, str]) -> dict[str, str]:
    """``entry`` with exactly ``settings`` as its recorded settings."""
    kept = {name: value for name, value in entry.items() if name not in ATTRIBUTES}
    kept.update(settings)
    return kept


def describe(settings: dict[str, str] | list[str]) -> str:
    """``trust on, maximum tx rate 100 Mbit/s``, or the names alone for a list."""
    if isinstance(settings, list):
        return ", ".join(ATTRIBUTES.get(name, name) for name in settings)
    words = []
    for name in ATTRIBUTES:
        if name in settings:
            unit = " Mbit/s" if name.endswith("rate") else ""
            words.append(f"{ATTRIBUTES[name]} {settings[name]}{unit}")
    return ", ".join(words)


def must_apply(name: str, settings: dict[str, str], policy: str) -> bool:
    """Whether failing to apply setting ``name`` refuses the guest under ``policy``."""
    if policy == "required":
        return True
    if policy == "trust":
        return name == "trust" and settings.get("trust") == "on"
    return False
