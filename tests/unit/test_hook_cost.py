"""What keeps the hook cheap (issue 15) must not change what it decides.

The hook's path avoids :mod:`re`, :mod:`enum`, ``namedtuple`` and the ``sqlite3``
package: the checks that stand in for regular expressions are held here to the
patterns they replaced, records to what namedtuple gave, and the cache of what
running guests hold to what the status files say.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import subprocess
import sys
from collections import namedtuple

import pytest

from vfmigrate import METADATA_NAMESPACE, domxml, lexical
from vfmigrate.config import is_network_label
from vfmigrate.records import record
from vfmigrate.running import running_guests

from .conftest import PACKAGE_PARENT
from .domains import guest_uuid, plain_guest, teaming_guest

SOURCE_VF = "0000:5e:02.3"

# The regular expressions the lexical checks replaced, as they were.
PATTERNS = {
    "uuid": (re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                        r"[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"), lexical.is_uuid),
    "mac": (re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"), lexical.is_mac),
    "pci": (re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])"),
            lexical.is_pci_address),
    "pci any case": (re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]"),
                     lambda text: lexical.is_pci_address(text, lexical.HEX_DIGITS)),
    "C number": (re.compile(r"0[xX][0-9a-fA-F]{1,8}|0[0-7]{0,11}|[1-9][0-9]{0,9}"),
                 lexical.is_c_number),
    "seconds": (re.compile(r"[0-9]{1,6}(\.[0-9]{0,6})?|\.[0-9]{1,6}"),
                lexical.is_decimal_seconds),
    "network label": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"), is_network_label),
}

ALPHABET = "0123456789abcdefABCDEFxXgz:-._ \t\n\u0663\u00b2\uff12+@*?[]"
EDGES = ["", "0", "00", "0x", "0X1f", "0x123456789", "017", "0178", "1" * 10, "1" * 11,
         ".5", "5.", "1.234567", "123456.123456", "1234567", "١٢",
         "12345678-1234-1234-1234-123456789abc", "123456781234123412341234567890ab",
         "12345678-12341234-1234-123456789abc", "12345678-1234-1234-1234-123456789abc-",
         "52:54:00:AA:bb:0c", "52:54:00:aa:bb:0c:", "52-54-00-aa-bb-0c",
         "0000:3b:02.1", "0000:3B:02.1", "0000:3b:02.8", " 0000:3b:02.1", "a" * 64, "a" * 65,
         "_net", "net.1:a-b"]


def corpus(seed: int = 15, count: int = 4000) -> list[str]:
    generator = random.Random(seed)
    texts = list(EDGES)
    for _ in range(count):
        texts.append("".join(generator.choice(ALPHABET)
                             for _ in range(generator.randint(0, 40))))
        # near misses of each shape: a valid example with one character changed
        example = generator.choice(EDGES[16:27])
        index = generator.randrange(len(example))
        texts.append(example[:index] + generator.choice(ALPHABET) + example[index + 1:])
    return texts


@pytest.mark.parametrize("shape", PATTERNS)
def test_each_lexical_check_accepts_exactly_what_its_pattern_did(shape):
    pattern, check = PATTERNS[shape]
    wrong = [text for text in corpus() if bool(pattern.fullmatch(text)) != check(text)]
    assert wrong == []


OLD_TAG_NAME = re.compile(rb"<[^\s/>]+")
OLD_ATTRIBUTE = re.compile(rb"""(\s+)([^\s=/>]+)(\s*=\s*)("[^"]*"|'[^']*')""")


def old_attributes(tag: bytes) -> list[tuple[bytes, int, int]]:
    found, position = [], OLD_TAG_NAME.match(tag).end()
    while (match := OLD_ATTRIBUTE.match(tag, position)) is not None:
        found.append((match.group(2), match.start(4), match.end()))
        position = match.end()
    return found


def test_start_tag_attributes_are_read_as_the_pattern_read_them():
    generator = random.Random(15)
    pieces = [b" ", b"\t", b"\n", b"domain", b"bus", b"=", b"'", b'"', b"0x3b", b"/", b">",
              b"a", b"<", b"\r", b"''", b"x='1'", b' y="2"']
    tags = [b"<address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/>",
            b"<a x = '>' y='2'>", b"<a x='1'y='2'/>", b"<a=b x='1'/>", b"<a/>"]
    tags += [b"<address" + b"".join(generator.choice(pieces)
                                     for _ in range(generator.randint(0, 14)))
             for _ in range(5000)]
    for tag in tags:
        assert [(a.name, a.quote, a.end) for a in domxml._attributes(tag)] == \
            old_attributes(tag), tag


class Claimish(record("Claimish", "id vf state")):
    __slots__ = ()


def test_a_record_behaves_as_the_namedtuple_it_replaces():
    New = Claimish
    Old = namedtuple("Claimish", "id vf state")
    new, old = New(1, "0000:3b:02.1", state="active"), Old(1, "0000:3b:02.1", state="active")
    assert new == old and hash(new) == hash(old) and tuple(new) == tuple(old)
    assert repr(new) == repr(old)
    assert new._replace(state="released") == old._replace(state="released")
    assert new._asdict() == old._asdict() and New._fields == Old._fields
    assert sorted([New(2, "b", "x"), new]) == [new, New(2, "b", "x")]
    assert (new.id, new.vf, new.state) == (1, "0000:3b:02.1", "active")
    assert pickle.loads(pickle.dumps(new)) == new
    for bad in (lambda: New(1, 2), lambda: New(1, 2, 3, 4), lambda: New(1, 2, colour=3)):
        with pytest.raises(TypeError):
            bad()


def test_the_hooks_vf_path_imports_nothing_heavy(host):
    """A migrate with a VF, run in a fresh interpreter as libvirt runs the hook: none of
    the modules whose import cost more than the hook's work is loaded."""
    host.write_config({"physnet1": "ens1f0"})
    script = (f"import io, sys\nbefore = set(sys.modules)\n"
              f"sys.path.insert(0, {str(PACKAGE_PARENT)!r})\n"
              "from vfmigrate.hook import main\n"
              "xml = sys.stdin.buffer.read()\nout = io.BytesIO()\n"
              "code = main(['vfmigrate', 'web1', 'migrate', 'begin', '-'], io.BytesIO(xml), "
              "out, journal_sender=lambda *a, **k: None)\n"
              "assert code == 0 and out.getvalue(), code\n"
              "print(' '.join(sorted(set(sys.modules) - before)))\n")
    result = subprocess.run([sys.executable, "-I", "-c", script],
                            input=teaming_guest("web1", [SOURCE_VF]), capture_output=True,
                            env=host.hook_env(), timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    loaded = set(result.stdout.decode().split())
    assert "vfmigrate.claims" in loaded
    heavy = {"re", "enum", "sqlite3", "datetime", "contextlib", "fnmatch", "json", "logging",
             "typing", "pathlib", "dataclasses", "numbers", "xml.etree", "libvirt",
             "functools", "collections", "xml"}
    assert loaded & heavy == set()


def test_the_ledger_loads_sqlite_without_functools_and_leaves_the_real_one(tmp_path):
    """_sqlite3 loads beside a functools that caches nothing (vfmigrate.ledger); the
    ledger works through it, and a later import of functools gets the real module."""
    script = (f"import sys\nsys.path.insert(0, {str(PACKAGE_PARENT)!r})\n"
              "from vfmigrate.ledger import ACTIVE, Ledger\n"
              "assert 'functools' not in sys.modules and 'collections' not in sys.modules\n"
              f"with Ledger({str(tmp_path / 'ledger.sqlite3')!r}) as ledger:\n"
              "    for index in range(3):\n"
              "        with ledger.transaction():\n"
              "            ledger.add(vf=f'0000:3b:02.{index}', network='physnet1',\n"
              "                       domain_uuid=f'uuid-{index}', domain_name=f'g{index}',\n"
              "                       state=ACTIVE, reason='test')\n"
              "    print(len(ledger.live_claims()))\n"
              "import functools\n"
              "print(functools.partial.__module__, functools.lru_cache(maxsize=2)(abs)(-3))\n")
    # -S as the installed hook runs: no site module, which may load functools itself
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["3", "functools 3"]


# -- what running guests hold, and the cache of it ----------------------------

def unplugged_vf_guest(name: str, vf: str) -> bytes:
    """A running guest whose VF ``vfmigrate migrate`` has unplugged (its metadata names
    the VF, to be plugged back in): it holds the VF though no device names it."""
    entry = (f"<metadata><v:vfs xmlns:v='{METADATA_NAMESPACE}'><v:vf alias='ua-vf0' "
             f"mac='52:54:00:00:00:09' address='{vf}' network='physnet1' "
             f"replug='on-arrival' device='interface'/></v:vfs></metadata>")
    return plain_guest(name).replace(b"<memory", entry.encode() + b"<memory", 1)


def test_a_vf_a_running_guest_holds_only_in_its_metadata_is_not_handed_out(host):
    """The hook read only ``<devices>`` of running guests, the listener also their
    metadata: a VF unplugged for a ``vfmigrate migrate`` looked free to the hook."""
    held = str(host.physnet1_vfs[0])
    host.add_running_guest(unplugged_vf_guest("db", held), "db")
    assert {str(a) for a in running_guests(host.run_dir)[guest_uuid("db")].held} == {held}
    result = host.hook("migrate", teaming_guest("web1", [SOURCE_VF], networks=["physnet1"]),
                       domain="web1")
    assert result.code == 0, result.stderr
    [device] = domxml.parse(result.stdout).devices
    assert str(device.address) == str(host.physnet1_vfs[1])


def same_size_other_vf(path) -> None:
    """Rewrite the status file in place, same size, naming function 1 instead of 0."""
    text = path.read_bytes()
    assert text.count(b"function='0x0'") == 1
    path.write_bytes(text.replace(b"function='0x0'", b"function='0x1'"))


def age(path, seconds: float = 10) -> None:
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns - int(seconds * 1e9)))


def test_the_cache_is_used_only_while_the_status_file_is_the_same(host, tmp_path):
    cache = str(tmp_path / "running.cache")
    first, second = str(host.physnet1_vfs[0]), str(host.physnet1_vfs[1])
    assert second == first[:-1] + "1"   # what same_size_other_vf makes of it
    path = host.run_dir / "db.xml"
    host.add_running_guest(teaming_guest("db", [first]), "db")
    age(path)
    assert {str(a) for a in running_guests(host.run_dir, cache_path=cache)[
        guest_uuid("db")].held} == {first}
    assert os.stat(cache).st_mode & 0o777 == 0o600

    # Rewritten in place with the same size and the old mtime: the key is unchanged and
    # the cached answer is what comes back (which shows the cache is read).
    stamp = path.stat()
    same_size_other_vf(path)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert {str(a) for a in running_guests(host.run_dir, cache_path=cache)[
        guest_uuid("db")].held} == {first}

    # As libvirt rewrites it (a new file renamed over the old one): read again.
    host.add_running_guest(teaming_guest("db", [second]), "db.new")
    os.replace(host.run_dir / "db.new.xml", path)
    age(path)
    assert {str(a) for a in running_guests(host.run_dir, cache_path=cache)[
        guest_uuid("db")].held} == {second}


def test_a_file_changed_just_before_the_cache_was_written_is_read_again(host, tmp_path):
    """Within the file system's timestamp granularity a rewrite in place can keep the
    key; such racy entries are not trusted (as git treats its index)."""
    cache = str(tmp_path / "running.cache")
    first, second = str(host.physnet1_vfs[0]), str(host.physnet1_vfs[1])
    assert second == first[:-1] + "1"   # what same_size_other_vf makes of it
    path = host.run_dir / "db.xml"
    host.add_running_guest(teaming_guest("db", [first]), "db")
    running_guests(host.run_dir, cache_path=cache)
    stamp = path.stat()
    same_size_other_vf(path)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert {str(a) for a in running_guests(host.run_dir, cache_path=cache)[
        guest_uuid("db")].held} == {second}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other stand-ins setting"])
def test_a_damaged_or_foreign_cache_is_ignored_and_written_again(host, tmp_path, damage):
    cache = tmp_path / "running.cache"
    held = str(host.physnet1_vfs[0])
    host.add_running_guest(teaming_guest("db", [held]), "db")
    host.add_running_guest(plain_guest("idle"), "idle")
    for path in host.run_dir.iterdir():
        age(path)
    expected = running_guests(host.run_dir)
    running_guests(host.run_dir, cache_path=str(cache))
    if damage == "garbage":
        cache.write_bytes(b"\xff\xfe not a cache\n")
    elif damage == "truncated":
        cache.write_text(cache.read_text()[:-20])
    guests = running_guests(host.run_dir, allow_stand_ins=damage.startswith("other"),
                            cache_path=str(cache))
    assert guests == expected
    assert cache.read_text().startswith("vfmigrate running-guests cache 1")


def test_the_hook_keeps_its_cache_in_the_state_dir_root_only(host):
    host.add_running_guest(teaming_guest("db", [str(host.physnet1_vfs[0])]), "db")
    result = host.hook_process("migrate", teaming_guest("web1", [SOURCE_VF],
                                                        networks=["physnet1"]), domain="web1")
    assert result.code == 0, result.stderr
    cache = host.state_dir / "running-guests.cache"
    assert cache.stat().st_mode & 0o777 == 0o600
    assert str(host.physnet1_vfs[0]) in cache.read_text()
