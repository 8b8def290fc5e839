"""Writes tests/dfu/corpus/: mutated package zips and init packets that tests/dfu/test_package_fuzz.py
reads on every run. Regenerate with `.venv/bin/python -m tests.dfu.make_corpus` (it replaces the files).

Deterministic: named cases aimed at each way `zipfile` and its decompressors fail on corrupt input, then
mutants drawn from a fixed seed. The compressed bases come from this machine's zlib, bz2 and lzma, so another
build of those libraries may write different bytes; the committed files are what the tests read.
"""

from __future__ import annotations

import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.dfu.package_mutations import (
    APP_DAT,
    Delete,
    Flip,
    Insert,
    Mutation,
    Rename,
    SetField,
    Truncate,
    Zip64Extra,
    apply,
    base_init_packets,
    base_packages,
    layout,
    manifest_mutations,
    mutate_bytes,
    package_with_manifest,
    random_byte_mutation,
    random_wire_message,
    random_zip_mutations,
    varint,
)

CORPUS = Path(__file__).parent / "corpus"
SEED = 13
RANDOM_ZIPS_PER_BASE = 40
RANDOM_INIT_PACKETS = 120


def named_zip_mutations() -> Iterator[tuple[str, str, list[Mutation]]]:
    """(base, label, mutations): a case per failure class of zipfile and per header field a reader trusts."""
    manifest, dat, app = 0, 1, 2  # member order in every base package
    yield "stored", "central-version-16.8", [SetField("central", app, "version", 168)]
    yield "stored", "central-version-max", [SetField("central", manifest, "version", 0xFFFF)]
    yield "stored", "name-not-utf8", [Rename(app, b"app\xff.bin", utf8=True)]
    yield "stored", "name-broken-sequence", [Rename(manifest, b"\xc3(", utf8=True)]
    yield "stored", "name-surrogate", [Rename(dat, b"\xed\xa0\x80", utf8=True)]
    yield "stored", "name-duplicate", [Rename(dat, b"app.bin", utf8=False)]
    yield "stored", "name-only-in-central", [SetField("local", app, "name_len", 3)]
    for method in (1, 6, 7, 9, 12, 14, 19, 95, 97, 98, 99, 0xFFFF):
        yield "stored", f"method-{method}-on-stored-data", [SetField("central", app, "method", method)]
    yield "stored", "method-deflate-on-stored-data", [SetField("central", app, "method", 8)]
    yield "deflated", "method-stored-on-deflated-data", [SetField("central", app, "method", 0)]
    yield "deflated", "method-lzma-on-deflated-data", [SetField("central", app, "method", 14)]
    yield "lzma", "lzma-properties-cut", [SetField("central", dat, "csize", 3)]
    for field, value in (
        ("offset", (1 << 64) - 1),
        ("offset", 1 << 40),
        ("usize", 1 << 63),
        ("csize", 1 << 62),
    ):
        yield "stored", f"zip64-{field}-{value:x}", [Zip64Extra(app, **{field: value})]
    yield "deflated", "zip64-all-huge", [Zip64Extra(app, (1 << 64) - 1, (1 << 64) - 1, (1 << 64) - 1)]
    yield "stored", "encrypted", [SetField("central", app, "flags", 0x1)]
    yield "stored", "strong-encryption", [SetField("central", app, "flags", 0x41)]
    for field in ("csize", "usize", "offset"):
        for value in (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000):
            yield "stored", f"central-{field}-{value:x}", [SetField("central", app, field, value)]
    yield "deflated", "deflated-usize-huge", [SetField("central", app, "usize", 0xFFFFFFFE)]
    yield "deflated", "deflated-csize-short", [SetField("central", app, "csize", 10)]
    yield "stored", "local-extra-huge", [SetField("local", app, "extra_len", 0xFFFF)]
    yield "stored", "central-extra-huge", [SetField("central", dat, "extra_len", 0xFFFF)]
    yield "stored", "central-extra-corrupt", [SetField("central", dat, "extra_len", 4)]
    yield "stored", "central-comment-huge", [SetField("central", manifest, "comment_len", 0xFFFF)]
    yield "stored", "eocd-entries-huge", [SetField("eocd", 0, "entries", 0xFFFF)]
    yield "stored", "eocd-entries-zero", [SetField("eocd", 0, "entries", 0)]
    yield "stored", "eocd-cd-size-huge", [SetField("eocd", 0, "cd_size", 0xFFFFFFFF)]
    yield "stored", "eocd-cd-offset-huge", [SetField("eocd", 0, "cd_offset", 0xFFFFFFFF)]
    yield "stored", "eocd-cd-offset-zero", [SetField("eocd", 0, "cd_offset", 0)]
    yield "stored", "eocd-other-disk", [SetField("eocd", 0, "disk", 1)]
    yield "stored", "eocd-comment-len", [SetField("eocd", 0, "comment_len", 20)]
    for base in ("deflated", "bzip2", "lzma"):
        for position in (40, 60, 90, 200):
            yield base, f"{base}-flip-{position}", [Flip(position, 0xFF)]
        yield base, f"{base}-cut-data", [Delete(100, 30)]


def zip_cases() -> Iterator[tuple[str, bytes]]:
    """Every corpus zip: named cases, truncations at each record, manifests, then seeded mutants."""
    bases = base_packages()
    for base_name, label, mutations in named_zip_mutations():
        yield f"{label}.zip", apply(bases[base_name], mutations)
    stored = bases["stored"]
    plan = layout(stored)
    for record, offsets in (("local", plan.local), ("central", plan.central)):
        for index, offset in enumerate(offsets):
            for extra in (0, 4, 20):
                yield f"cut-{record}{index}-{extra}.zip", apply(stored, [Truncate(offset + extra)])
    yield "cut-eocd.zip", apply(stored, [Truncate(plan.eocd + 10)])
    zip64_locator = b"PK\x06\x07" + bytes(4) + (1 << 40).to_bytes(8, "little") + bytes(4)
    yield "zip64-locator-bogus.zip", apply(stored, [Insert(plan.eocd, zip64_locator)])
    for label, text in manifest_mutations().items():
        yield f"manifest-{label}.zip", package_with_manifest(text)
    rng = random.Random(SEED)
    for base_name, base_zip in bases.items():
        for number in range(RANDOM_ZIPS_PER_BASE):
            yield f"random-{base_name}-{number:03d}.zip", apply(base_zip, random_zip_mutations(rng))


def init_packet_cases() -> Iterator[tuple[str, bytes]]:
    """Every corpus init packet: truncations, hostile wire format, then seeded mutants."""
    bases = base_init_packets()
    for name, packet in bases.items():
        for length in range(0, len(packet), 7):
            yield f"{name}-cut-{length:03d}.dat", packet[:length]
    yield "empty.dat", b""
    yield "end-group.dat", b"\x0c"
    yield "groups-deep.dat", b"\x0b" * 2000
    yield "groups-unbalanced.dat", b"\x0b" * 10 + b"\x0c" * 11
    yield "nested-deep.dat", b"\x0a\x80\x01" * 2000
    yield "varint-endless.dat", b"\x08" + b"\xff" * 20
    yield "length-huge.dat", b"\x0a" + varint(1 << 40) + APP_DAT
    yield "field-zero.dat", b"\x00\x01" + APP_DAT
    yield "wire-type-7.dat", b"\x0f" + APP_DAT
    yield "command-and-signed.dat", APP_DAT + bases["signed"]
    yield "zip-magic.dat", b"PK\x03\x04" + APP_DAT
    rng = random.Random(SEED)
    for number in range(RANDOM_INIT_PACKETS // 2):
        yield f"random-wire-{number:03d}.dat", random_wire_message(rng)
    for number in range(RANDOM_INIT_PACKETS // 2):
        base = bases[rng.choice(sorted(bases))]
        mutations = [random_byte_mutation(rng) for _ in range(rng.randint(1, 4))]
        yield f"random-mutant-{number:03d}.dat", mutate_bytes(base, mutations)


def write(directory: Path = CORPUS) -> int:
    """Replace the corpus under `directory`; returns the total bytes written."""
    total = 0
    for sub, cases in (("zip", zip_cases()), ("dat", init_packet_cases())):
        target = directory / sub
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name, data in cases:
            path = target / name
            if path.exists():
                raise SystemExit(f"two corpus cases are named {name}")
            path.write_bytes(data)
            total += len(data)
    return total


if __name__ == "__main__":
    size = write(Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS)
    print(f"corpus written: {size} bytes")
