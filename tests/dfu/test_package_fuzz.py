"""Any bytes in, a package or a `PackageError` out: every public reader, fuzzed and over a committed corpus.

A package arrives over the network, and a caller that reports "bad package" on `PackageError` cannot act on a
bare `NotImplementedError` from a flipped version byte (issue #13: such a job hung in DOWNLOADING for good).
Hypothesis mutates valid packages where a zip reader trusts them (header fields, names, compression methods,
sizes, the manifest) and init packets (bytes and protobuf wire format); tests/dfu/corpus/ (written by
tests/dfu/make_corpus.py) replays mutants that hit each failure class of zipfile on every run.
"""

from __future__ import annotations

import functools
import io
import json
import lzma
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfu.errors import PackageError
from dfu.init_packet import parse_init_packet
from dfu.package import DfuPackage
from tests.dfu.make_corpus import CORPUS
from tests.dfu.package_mutations import (
    APP,
    APP_ENTRY,
    BAD_NAMES,
    INTERESTING_VALUES,
    INTERESTING_VALUES_32,
    RECORD_FIELDS,
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
    mutate_bytes,
    package_with_manifest,
    varint,
)


def fuzz(examples: int) -> settings:
    """Example counts per property, sized so the whole file runs in a few seconds."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


BASES = base_packages()
INIT_BASES = base_init_packets()


def read_or_refuse(read: Callable[[], object]) -> bool:
    """True if read, False if refused with a PackageError that says something; anything else escapes."""
    try:
        read()
    except PackageError as exc:
        message = str(exc)
    else:
        return True
    assert message.strip(), "a PackageError must say what is wrong"
    return False


def every_zip_reader(data: bytes) -> list[Callable[[], object]]:
    return [
        lambda: DfuPackage.from_zip(data),
        lambda: DfuPackage.from_zip(data, strict=False),
        lambda: DfuPackage.from_files([("job.zip", data)]),
    ]


def every_init_packet_reader(dat: bytes) -> list[Callable[[], object]]:
    return [
        lambda: parse_init_packet(dat),
        lambda: DfuPackage.from_pair(dat, APP),
        lambda: DfuPackage.from_pair(dat, APP, strict=False),
        lambda: DfuPackage.from_files([("appdat.bin", dat), ("app.bin", APP)]),
        lambda: DfuPackage.from_files([("app.bin", APP), ("x.bin", dat)]),
        lambda: DfuPackage.from_files([("a.bin", dat), ("b.bin", dat)]),
    ]


# --- strategies ---------------------------------------------------------------------------------------------

positions = st.integers(min_value=-(1 << 16), max_value=1 << 16)
byte_mutations: st.SearchStrategy[Mutation] = st.one_of(
    st.builds(Flip, positions, st.integers(1, 255)),
    st.builds(Truncate, positions),
    st.builds(Insert, positions, st.binary(min_size=1, max_size=24)),
    st.builds(Delete, positions, st.integers(1, 64)),
)


@st.composite
def field_mutations(draw: st.DrawFn) -> SetField:
    record = draw(st.sampled_from(sorted(RECORD_FIELDS)))
    name = draw(st.sampled_from(sorted(RECORD_FIELDS[record])))
    wide = RECORD_FIELDS[record][name][1] == "<I"
    edges = INTERESTING_VALUES_32 if wide else INTERESTING_VALUES
    value = draw(st.sampled_from(edges) | st.integers(0, (1 << (32 if wide else 16)) - 1))
    return SetField(record, draw(st.integers(0, 2)), name, value)


renames = st.builds(
    Rename, st.integers(0, 2), st.sampled_from(BAD_NAMES) | st.binary(min_size=1, max_size=13), st.booleans()
)
sizes_64 = st.none() | st.sampled_from([0, 1 << 32, 1 << 63, (1 << 64) - 1]) | st.integers(0, (1 << 64) - 1)
zip64_extras = st.builds(Zip64Extra, st.integers(0, 2), sizes_64, sizes_64, sizes_64)
zip_mutations = st.lists(field_mutations() | renames | zip64_extras | byte_mutations, min_size=1, max_size=4)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
manifest_keys = st.sampled_from(
    ["manifest", "application", "bootloader", "softdevice", "softdevice_bootloader", "bin_file", "dat_file"]
)


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    """The valid manifest with one value somewhere replaced, or any JSON, or that JSON's text mutated."""
    entry: dict[str, object] = dict(APP_ENTRY)
    entry[draw(manifest_keys | st.just("info_read_only_metadata"))] = draw(json_values)
    images: dict[str, object] = {draw(manifest_keys): entry}
    if draw(st.booleans()):
        images[draw(manifest_keys)] = draw(json_values)
    document: object = draw(st.sampled_from([{"manifest": images}, images, draw(json_values)]))
    text = json.dumps(document).encode()
    return mutate_bytes(text, draw(st.lists(byte_mutations, max_size=2)))


@st.composite
def wire_messages(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Protobuf wire format around dfu.Packet's field numbers: every wire type, nesting, lying lengths."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 4))):
        number = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 10]) | st.integers(0, (1 << 29) - 1))
        wire_type = draw(st.integers(0, 7))
        out += varint(number << 3 | wire_type)
        if wire_type == 0:
            out += varint(
                draw(st.sampled_from([0, 1, 3, 0xFFFFFFFF, 1 << 32, (1 << 64) - 1]) | st.integers(0))
            )
        elif wire_type in (1, 5):
            out += draw(st.binary(min_size=8 if wire_type == 1 else 4, max_size=8 if wire_type == 1 else 4))
        elif wire_type == 2:
            nested = depth < 4 and draw(st.booleans())
            inner = draw(wire_messages(depth + 1)) if nested else draw(st.binary(max_size=40))
            out += varint(draw(st.just(len(inner)) | st.integers(0, 1 << 40))) + inner
        elif wire_type == 3 and depth < 4:
            out += draw(wire_messages(depth + 1)) + varint(number << 3 | 4)
    return bytes(out)


# --- properties ---------------------------------------------------------------------------------------------


@fuzz(1500)
@given(base=st.sampled_from(sorted(BASES)), mutations=zip_mutations)
def test_mutated_packages_are_read_or_refused(base: str, mutations: list[Mutation]) -> None:
    data = apply(BASES[base], mutations)
    for read in every_zip_reader(data):
        read_or_refuse(read)


@fuzz(400)
@given(manifest=manifests(), deflate=st.booleans())
def test_mutated_manifests_are_read_or_refused(manifest: bytes, deflate: bool) -> None:
    data = package_with_manifest(manifest, zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
    read_or_refuse(lambda: DfuPackage.from_zip(data))


@fuzz(400)
@given(data=st.binary(max_size=600) | st.binary(max_size=100).map(lambda tail: b"PK\x03\x04" + tail))
def test_any_bytes_are_read_or_refused(data: bytes) -> None:
    for read in [*every_zip_reader(data), *every_init_packet_reader(data)]:
        read_or_refuse(read)


@fuzz(800)
@given(
    dat=st.sampled_from(sorted(INIT_BASES))
    .map(INIT_BASES.__getitem__)
    .flatmap(
        lambda base: st.lists(byte_mutations, min_size=1, max_size=4).map(lambda m: mutate_bytes(base, m))
    )
    | wire_messages()
)
def test_mutated_init_packets_are_read_or_refused(dat: bytes) -> None:
    for read in every_init_packet_reader(dat):
        read_or_refuse(read)


# --- the corpus ---------------------------------------------------------------------------------------------

CORPUS_ZIPS = sorted((CORPUS / "zip").glob("*.zip"))
CORPUS_DATS = sorted((CORPUS / "dat").glob("*.dat"))


def escapes(cases: list[tuple[str, Callable[[], object]]]) -> list[str]:
    """Every case that raised something other than PackageError, named, so one run lists them all."""
    found = []
    for name, read in cases:
        try:
            read_or_refuse(read)
        except Exception as exc:
            found.append(f"{name}: {type(exc).__name__}: {exc}")
    return found


def test_corpus_zips_are_read_or_refused() -> None:
    cases: list[tuple[str, Callable[[], object]]] = []
    for path in CORPUS_ZIPS:
        data = path.read_bytes()
        cases += [(path.name, read) for read in every_zip_reader(data)]
        cases += [(path.name, functools.partial(DfuPackage.from_zip, path))]
        cases += [(path.name, functools.partial(DfuPackage.load, path))]
    assert escapes(cases) == []


def test_corpus_init_packets_are_read_or_refused(tmp_path: Path) -> None:
    (tmp_path / "app.bin").write_bytes(APP)
    escaped: list[str] = []
    for path in CORPUS_DATS:
        dat = path.read_bytes()
        (tmp_path / "app.dat").write_bytes(dat)  # load() finds app.bin beside it
        readers = [*every_init_packet_reader(dat), lambda: DfuPackage.load(tmp_path / "app.dat")]
        escaped += escapes([(path.name, read) for read in readers])
    assert escaped == []


def raw_zipfile_error(data: bytes) -> type[Exception] | None:
    """What plain zipfile raises reading every member: the corpus must reach each of its failure classes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                archive.read(info)
    except Exception as exc:
        return type(exc)
    return None


def test_the_corpus_reaches_every_way_zipfile_fails() -> None:
    """Else a regenerated corpus could quietly stop testing what the reader converts (and the test above
    would pass against the unfixed reader)."""
    reached = {raw_zipfile_error(path.read_bytes()) for path in CORPUS_ZIPS}
    expected = {
        zipfile.BadZipFile,
        NotImplementedError,
        UnicodeDecodeError,
        RuntimeError,
        zlib.error,
        lzma.LZMAError,
        OSError,
        EOFError,
        ValueError,
        OverflowError,
        None,
    }
    assert expected - reached == set()
    assert sum(path.stat().st_size for path in [*CORPUS_ZIPS, *CORPUS_DATS]) < 1 << 20


def test_the_corpus_holds_packages_that_still_read() -> None:
    """Mutants that zipfile shrugs off must still be judged by the package checks, not all refused early."""
    outcomes = [read_or_refuse(functools.partial(DfuPackage.from_zip, path)) for path in CORPUS_ZIPS]
    assert any(outcomes)
    assert not all(outcomes)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("central-version-16.8.zip", "zip feature this reader does not support: zip file version 16.8"),
        ("name-not-utf8.zip", "member name is not valid UTF-8"),
        ("method-99-on-stored-data.zip", "app.bin.*not supported"),
        ("method-deflate-on-stored-data.zip", r"cannot read app\.bin from the package: .*\(error\)"),
        ("lzma-flip-200.zip", r"cannot read app\.dat from the package: .*\(LZMAError\)"),
        ("zip64-offset-ffffffffffffffff.zip", r"app\.bin.*\(OverflowError\)"),
        ("encrypted.zip", r"app\.bin.*encrypted"),
        ("name-duplicate.zip", "twice"),
    ],
)
def test_corpus_refusals_say_what_is_wrong(name: str, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        DfuPackage.from_zip(CORPUS / "zip" / name)
