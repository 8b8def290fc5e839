"""Structured mutations of Secure DFU packages and init packets, for the fuzz test and the corpus generator.

Random bytes almost never get past a zip reader's first check, so most mutations here aim at the fields a zip
reader trusts: each header field of the local headers, the central directory and the end record, member names
(invalid UTF-8, duplicates), compression methods and declared sizes, plus the manifest's JSON. Mutations are
small values, so hypothesis can shrink them and print a failing one.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

from dfu.dfu_cc_pb2 import Packet
from dfu.init_packet import FwType, build_init_packet, wrap_init_command
from dfu.package import FirmwareFile, build_package
from simulator.firmware import make_application

APP = make_application(256, 1)
APP_DAT = build_init_packet(FwType.APPLICATION, APP, fw_version=1, hw_version=52, sd_req=[0x100])
APP_ENTRY = {"bin_file": "app.bin", "dat_file": "app.dat"}
APP_MANIFEST: dict[str, object] = {"manifest": {"application": APP_ENTRY}}

# Header fields: name -> (offset in the record, struct format).
LOCAL_FIELDS: dict[str, tuple[int, str]] = {
    "version": (4, "<H"),
    "flags": (6, "<H"),
    "method": (8, "<H"),
    "crc": (14, "<I"),
    "csize": (18, "<I"),
    "usize": (22, "<I"),
    "name_len": (26, "<H"),
    "extra_len": (28, "<H"),
}
CENTRAL_FIELDS: dict[str, tuple[int, str]] = {
    "made_by": (4, "<H"),
    "version": (6, "<H"),
    "flags": (8, "<H"),
    "method": (10, "<H"),
    "crc": (16, "<I"),
    "csize": (20, "<I"),
    "usize": (24, "<I"),
    "name_len": (28, "<H"),
    "extra_len": (30, "<H"),
    "comment_len": (32, "<H"),
    "disk": (34, "<H"),
    "external": (38, "<I"),
    "offset": (42, "<I"),
}
EOCD_FIELDS: dict[str, tuple[int, str]] = {
    "disk": (4, "<H"),
    "cd_disk": (6, "<H"),
    "entries_disk": (8, "<H"),
    "entries": (10, "<H"),
    "cd_size": (12, "<I"),
    "cd_offset": (16, "<I"),
    "comment_len": (20, "<H"),
}
RECORD_FIELDS = {"local": LOCAL_FIELDS, "central": CENTRAL_FIELDS, "eocd": EOCD_FIELDS}

INTERESTING_VALUES: tuple[int, ...] = (0, 1, 2, 7, 8, 12, 14, 20, 45, 63, 99, 0x7F, 0x800, 0x801, 0xFFFF)
"""Sizes at and around the edges, compression methods (stored, deflate, bzip2, lzma, AES), versions, flags."""
INTERESTING_VALUES_32: tuple[int, ...] = (*INTERESTING_VALUES, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
"""Plus the zip64 marker and values that overflow a signed 32-bit size."""


@dataclass(frozen=True, slots=True)
class SetField:
    """Overwrite one header field of a local header, a central directory record or the end record."""

    record: str
    index: int
    name: str
    value: int


@dataclass(frozen=True, slots=True)
class Rename:
    """Give member `index` another name of the same length in both headers, with or without the UTF-8 flag."""

    index: int
    name: bytes
    utf8: bool


@dataclass(frozen=True, slots=True)
class Zip64Extra:
    """Give central record `index` a zip64 extra field holding 64-bit sizes and offset (each None: absent)."""

    index: int
    usize: int | None = None
    csize: int | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class Flip:
    position: int
    mask: int


@dataclass(frozen=True, slots=True)
class Truncate:
    length: int


@dataclass(frozen=True, slots=True)
class Insert:
    position: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    position: int
    length: int


Mutation = SetField | Rename | Zip64Extra | Flip | Truncate | Insert | Delete
"""Positions wrap around the data's length, so any integer is a valid position."""


@dataclass(frozen=True, slots=True)
class ZipLayout:
    """Where each record of a (valid, comment-free) zip starts."""

    local: tuple[int, ...]
    central: tuple[int, ...]
    eocd: int

    def offset(self, record: str, index: int) -> int:
        if record == "eocd":
            return self.eocd
        offsets = self.local if record == "local" else self.central
        return offsets[index % len(offsets)]


def layout(data: bytes) -> ZipLayout:
    """The record offsets of a zip that `zipfile` can read (only valid packages are mutated)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        cd_offset = archive.start_dir
    central: list[int] = []
    position = cd_offset
    for _ in infos:
        central.append(position)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, position + 28)
        position += 46 + name_len + extra_len + comment_len
    return ZipLayout(tuple(info.header_offset for info in infos), tuple(central), position)


def apply(data: bytes, mutations: Sequence[Mutation]) -> bytes:
    """Apply the header mutations (located in the unmutated zip) first, then the byte-level ones in order."""
    plan = layout(data)
    out = bytearray(data)
    for mutation in mutations:
        if isinstance(mutation, SetField):
            offset, fmt = RECORD_FIELDS[mutation.record][mutation.name]
            value = mutation.value & (0xFFFF if fmt == "<H" else 0xFFFFFFFF)
            struct.pack_into(fmt, out, plan.offset(mutation.record, mutation.index) + offset, value)
        elif isinstance(mutation, Rename):
            for record, name_len_at, flags_at in (("local", 26, 6), ("central", 28, 8)):
                start = plan.offset(record, mutation.index)
                name_at = start + (30 if record == "local" else 46)
                (name_len,) = struct.unpack_from("<H", out, start + name_len_at)
                out[name_at : name_at + name_len] = mutation.name[:name_len].ljust(name_len, b"_")
                (flags,) = struct.unpack_from("<H", out, start + flags_at)
                flags = flags | 0x800 if mutation.utf8 else flags & ~0x800
                struct.pack_into("<H", out, start + flags_at, flags)
    # Insertions last, from the last record back, so the offsets above stay true; only the end record moves.
    extras = sorted(
        (m for m in mutations if isinstance(m, Zip64Extra)),
        key=lambda m: m.index % len(plan.central),
        reverse=True,
    )
    eocd = plan.eocd
    for extra in extras:
        start = plan.offset("central", extra.index)
        # zip64 order: uncompressed size, compressed size, offset; each 32-bit field then says 0xFFFFFFFF
        wide = [(24, extra.usize), (20, extra.csize), (42, extra.offset)]
        body = b"".join(struct.pack("<Q", v % (1 << 64)) for _, v in wide if v is not None)
        for field_at, v in wide:
            if v is not None:
                struct.pack_into("<I", out, start + field_at, 0xFFFFFFFF)
        name_len, extra_len = struct.unpack_from("<HH", out, start + 28)
        field = struct.pack("<HH", 1, len(body)) + body
        at = start + 46 + name_len + extra_len
        out[at:at] = field
        struct.pack_into("<H", out, start + 30, (extra_len + len(field)) & 0xFFFF)
        eocd += len(field)
        (cd_size,) = struct.unpack_from("<I", out, eocd + 12)
        struct.pack_into("<I", out, eocd + 12, (cd_size + len(field)) & 0xFFFFFFFF)
    layout_free = [m for m in mutations if not isinstance(m, SetField | Rename | Zip64Extra)]
    return mutate_bytes(bytes(out), layout_free)


def mutate_bytes(data: bytes, mutations: Sequence[Mutation]) -> bytes:
    """The mutations that know nothing of the format (all there is for init packets), in order."""
    out = bytearray(data)
    for mutation in mutations:
        if isinstance(mutation, Flip) and out:
            out[mutation.position % len(out)] ^= mutation.mask & 0xFF or 1
        elif isinstance(mutation, Truncate):
            del out[mutation.length % (len(out) + 1) :]
        elif isinstance(mutation, Insert):
            at = mutation.position % (len(out) + 1)
            out[at:at] = mutation.data
        elif isinstance(mutation, Delete):
            at = mutation.position % (len(out) + 1)
            del out[at : at + mutation.length]
    return bytes(out)


def zip_members(members: Sequence[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of the given members with a fixed timestamp (reproducible bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compression
            archive.writestr(info, data)
    return buffer.getvalue()


def package_with_manifest(manifest: bytes, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """The application package with another manifest.json."""
    return zip_members([("manifest.json", manifest), ("app.dat", APP_DAT), ("app.bin", APP)], compression)


def base_packages() -> dict[str, bytes]:
    """Valid packages to mutate: nrfutil's layout (stored) and each compression method zipfile writes."""
    nrfutil = build_package(
        hw_version=52, sd_req=[0x100], application=FirmwareFile("app.bin", APP), application_version=1
    )
    manifest = json.dumps(APP_MANIFEST).encode()
    bases = {"stored": nrfutil}
    for label, method in (
        ("deflated", zipfile.ZIP_DEFLATED),
        ("bzip2", zipfile.ZIP_BZIP2),
        ("lzma", zipfile.ZIP_LZMA),
    ):
        bases[label] = package_with_manifest(manifest, method)
    return bases


def base_init_packets() -> dict[str, bytes]:
    """Valid init packets to mutate: unsigned and with a (fixed, fake) signature."""
    packet = Packet()
    packet.ParseFromString(APP_DAT)
    command = packet.command.init.SerializeToString(deterministic=True)
    return {"unsigned": APP_DAT, "signed": wrap_init_command(command, signature=bytes(range(64)))}


def manifest_mutations() -> dict[str, bytes]:
    """Manifests that are not what a package reader expects, as text (some are not JSON or not UTF-8)."""
    entry = APP_ENTRY
    return {
        "not-json": b"{not json",
        "empty": b"",
        "list": b"[]",
        "null": b"null",
        "no-manifest-key": json.dumps({"application": entry}).encode(),
        "manifest-list": json.dumps({"manifest": [entry]}).encode(),
        "entry-string": json.dumps({"manifest": {"application": "app.bin"}}).encode(),
        "bin-number": json.dumps({"manifest": {"application": {**entry, "bin_file": 5}}}).encode(),
        "bin-null": json.dumps({"manifest": {"application": {**entry, "bin_file": None}}}).encode(),
        "dat-missing": json.dumps({"manifest": {"application": {"bin_file": "app.bin"}}}).encode(),
        "same-member": json.dumps({"manifest": {"application": {**entry, "dat_file": "app.bin"}}}).encode(),
        "listed-absent": json.dumps({"manifest": {"bootloader": entry, "softdevice": {**entry}}}).encode(),
        "escaping": json.dumps({"manifest": {"application": {**entry, "bin_file": "../app.bin"}}}).encode(),
        "nul-in-name": json.dumps({"manifest": {"application": {**entry, "bin_file": "app\0.bin"}}}).encode(),
        "metadata-huge": json.dumps(
            {"manifest": {"application": {**entry, "info_read_only_metadata": {"bl_size": 10**400}}}}
        ).encode(),
        "metadata-float": json.dumps(
            {"manifest": {"application": {**entry, "info_read_only_metadata": {"sd_size": 1.5}}}}
        ).encode(),
        "nested-deep": b"[" * 100_000 + b"]" * 100_000,
        "nested-objects": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
        "big-number": b'{"manifest": {"application": ' + b"9" * 20_000 + b"}}",
        "nan": b'{"manifest": NaN}',
        "duplicate-keys": b'{"manifest": {"application": {"bin_file": "app.bin", "dat_file": "app.dat"}},'
        b' "manifest": 1}',
        "not-utf8": b'{"manifest": {"application": {"bin_file": "app\xff.bin", "dat_file": "app.dat"}}}',
        "utf16": json.dumps(APP_MANIFEST).encode("utf-16"),
        "bom": b"\xef\xbb\xbf" + json.dumps(APP_MANIFEST).encode(),
        "lone-surrogate": b'{"manifest": {"application": {"bin_file": "\\ud800", "dat_file": "app.dat"}}}',
        "trailing": json.dumps(APP_MANIFEST).encode() + b" garbage",
    }


BAD_NAMES: tuple[bytes, ...] = (
    b"app\xff.bin",
    b"\xc3(",
    b"\xed\xa0\x80",
    b"app.bin",
    b"app.dat",
    b"manifest.json",
)
"""Invalid UTF-8 (a stray byte, a broken sequence, an encoded surrogate) and other members' names."""


def random_zip_mutations(rng: random.Random) -> list[Mutation]:
    """One to three mutations, mostly of header fields, drawn from the corpus generator's seeded `rng`."""
    mutations: list[Mutation] = []
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.5:
            record = rng.choice(sorted(RECORD_FIELDS))
            name = rng.choice(sorted(RECORD_FIELDS[record]))
            wide = RECORD_FIELDS[record][name][1] == "<I"
            values = INTERESTING_VALUES_32 if wide else INTERESTING_VALUES
            value = rng.choice(values) if rng.random() < 0.7 else rng.randrange(1 << (32 if wide else 16))
            mutations.append(SetField(record, rng.randrange(3), name, value))
        elif roll < 0.6:
            mutations.append(Rename(rng.randrange(3), rng.choice(BAD_NAMES), rng.random() < 0.7))
        elif roll < 0.7:
            sizes = [
                rng.choice((None, 0, 1 << 32, 1 << 63, (1 << 64) - 1, rng.randrange(1 << 64))) for _ in "uco"
            ]
            mutations.append(Zip64Extra(rng.randrange(3), *sizes))
        else:
            mutations.append(random_byte_mutation(rng))
    return mutations


def random_byte_mutation(rng: random.Random) -> Mutation:
    """A flip (most often), truncation, insertion or deletion somewhere in the data."""
    roll = rng.random()
    if roll < 0.6:
        return Flip(rng.randrange(1 << 16), rng.randrange(1, 256))
    if roll < 0.8:
        return Truncate(rng.randrange(1 << 16))
    if roll < 0.9:
        return Insert(rng.randrange(1 << 16), rng.randbytes(rng.randrange(1, 16)))
    return Delete(rng.randrange(1 << 16), rng.randrange(1, 64))


def varint(value: int) -> bytes:
    """Protobuf base-128 varint."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            return bytes(out + bytes([low]))
        out.append(low | 0x80)


def random_wire_message(rng: random.Random, depth: int = 0) -> bytes:
    """Protobuf wire format: dfu.Packet's field numbers, every wire type, nesting, groups, lying lengths."""
    out = bytearray()
    for _ in range(rng.randint(0, 4)):
        number = rng.choice((1, 2, 3, 4, 5, 7, 8, 9, 10, rng.randrange(1, 1 << 29)))
        wire_type = rng.randrange(8)
        out += varint(number << 3 | wire_type)
        if wire_type == 0:
            out += varint(rng.choice((0, 1, 0xFFFFFFFF, 1 << 32, (1 << 64) - 1, rng.randrange(1 << 70))))[:10]
        elif wire_type == 1:
            out += rng.randbytes(8)
        elif wire_type == 5:
            out += rng.randbytes(4)
        elif wire_type == 2:
            nested = depth < 5 and rng.random() < 0.6
            inner = random_wire_message(rng, depth + 1) if nested else rng.randbytes(rng.randrange(40))
            length = len(inner) if rng.random() < 0.9 else rng.randrange(1 << 35)
            out += varint(length) + inner
        elif wire_type == 3 and depth < 5:
            out += random_wire_message(rng, depth + 1) + varint(number << 3 | 4)
    return bytes(out)
