"""What names, numbers and addresses may look like: checks of untrusted text.

Written without :mod:`re` on purpose: the hook runs inside libvirt's start and
migration paths, and importing ``re`` (with the ``enum``, ``functools`` and
``collections`` it pulls in) cost more than everything the hook does for a
guest.  Each check says in its docstring the pattern it stands for; the tests
hold them to it.
"""

from __future__ import annotations

ASCII_DIGITS = frozenset("0123456789")
OCTAL_DIGITS = frozenset("01234567")
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
LOWER_HEX_DIGITS = frozenset("0123456789abcdef")
ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
BYTES_SPACE = b" \t\n\r\f\v"     # what \s matches in a bytes pattern


def made_of(text: str, allowed: frozenset, shortest: int = 1, longest: int = 1 << 30) -> bool:
    """``[allowed]{shortest,longest}``."""
    return shortest <= len(text) <= longest and set(text) <= allowed


def is_pci_address(text: str, digits: frozenset = LOWER_HEX_DIGITS) -> bool:
    """``hhhh:hh:hh.o`` (``digits`` are the hex digits allowed, lower case by default)."""
    return (len(text) == 12 and text[4] == ":" and text[7] == ":" and text[10] == "."
            and text[11] in OCTAL_DIGITS
            and set(text[0:4] + text[5:7] + text[8:10]) <= digits)


def is_uuid(text: str) -> bool:
    """``h{8}-?h{4}-?h{4}-?h{4}-?h{12}`` (hex digits of either case)."""
    position = 0
    for group, size in enumerate((8, 4, 4, 4, 12)):
        if not made_of(text[position:position + size], HEX_DIGITS, size, size):
            return False
        position += size
        if group < 4 and text[position:position + 1] == "-":
            position += 1
    return position == len(text)


def is_mac(text: str) -> bool:
    """``hh:hh:hh:hh:hh:hh`` (hex digits of either case)."""
    return (len(text) == 17 and all(text[index] == ":" for index in range(2, 17, 3))
            and {text[index] for index in range(17) if index % 3 != 2} <= HEX_DIGITS)


def is_c_number(text: str) -> bool:
    """An unsigned number as C's strtoul(base 0) reads it, ASCII only, at most 32 bits
    of hex, 12 octal or 10 decimal digits: ``0[xX]h{1,8}|0[0-7]{0,11}|[1-9][0-9]{0,9}``."""
    if text[:2] in ("0x", "0X"):
        return made_of(text[2:], HEX_DIGITS, 1, 8)
    if text[:1] == "0":
        return made_of(text, OCTAL_DIGITS, 1, 12)
    return text[:1] in ASCII_DIGITS and made_of(text, ASCII_DIGITS, 1, 10)


def is_decimal_seconds(text: str) -> bool:
    """``[0-9]{1,6}(\\.[0-9]{0,6})?|\\.[0-9]{1,6}``: float() also reads '١٢' and '1_0'."""
    whole, dot, fraction = text.partition(".")
    if not dot:
        return made_of(whole, ASCII_DIGITS, 1, 6)
    if not whole:
        return made_of(fraction, ASCII_DIGITS, 1, 6)
    return made_of(whole, ASCII_DIGITS, 1, 6) and made_of(fraction, ASCII_DIGITS, 0, 6)


def has_space(text: str) -> bool:
    """Whether any character is white space (``\\s``)."""
    return any(character.isspace() for character in text)
