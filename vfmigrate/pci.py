"""PCI addresses in their canonical sysfs form, ``0000:3b:02.1``."""

from __future__ import annotations

from . import lexical
from .records import record


def xml_number(text: str) -> int:
    """An unsigned number written as libvirt reads it (strtoul, base 0: hex, octal or
    decimal, ASCII only); ValueError for anything else.  Python's int() alone would
    also take Unicode digits ('\u0663' is 3), '_', signs and spaces."""
    if not lexical.is_c_number(text):
        raise ValueError(f"{text[:40]!r} is not a number")
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    if text[:1] == "0":
        return int(text, 8)
    return int(text)


class PciAddress(record("PciAddress", "domain bus slot function")):
    """A PCI address; ``str()`` gives the canonical ``DDDD:BB:SS.F``."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """Parse ``DDDD:BB:SS.F``; raise ValueError for anything else."""
        canonical = text.strip().lower()
        if not lexical.is_pci_address(canonical):
            raise ValueError(f"not a PCI address (DDDD:BB:SS.F): {text!r}")
        return cls(int(canonical[0:4], 16), int(canonical[5:7], 16),
                   int(canonical[8:10], 16), int(canonical[11], 16))

    @classmethod
    def from_xml_attributes(cls, domain: str | None, bus: str | None,
                            slot: str | None, function: str | None) -> PciAddress:
        """Build from libvirt's ``<address type='pci' domain= bus= slot= function=>``.

        libvirt accepts hex with ``0x``, octal with ``0`` or decimal (strtoul, base 0;
        ASCII digits only); an absent domain or function is 0.
        """
        values = []
        for name, raw, limit in (("domain", domain or "0", 0xFFFF), ("bus", bus, 0xFF),
                                 ("slot", slot, 0x1F), ("function", function or "0", 7)):
            if raw is None:
                raise ValueError(f"PCI address lacks '{name}'")
            try:
                value = xml_number(raw)
            except ValueError:
                raise ValueError(f"PCI address {name}={raw[:40]!r} is not a number") from None
            if not 0 <= value <= limit:
                raise ValueError(f"PCI address {name}={raw[:40]!r} is out of range")
            values.append(value)
        return cls(*values)

    @property
    def routing_id(self) -> int:
        return (self.bus << 8) | (self.slot << 3) | self.function

    def xml_attributes(self) -> dict[str, str]:
        """The attribute values libvirt itself writes."""
        return {"domain": f"0x{self.domain:04x}", "bus": f"0x{self.bus:02x}",
                "slot": f"0x{self.slot:02x}", "function": f"0x{self.function:x}"}

    def __str__(self) -> str:
        return "%04x:%02x:%02x.%x" % self   # domain, bus, slot, function

    __repr__ = __str__


def is_pci_address(text: str) -> bool:
    return lexical.is_pci_address(text.strip().lower())
