"""Crafted files against every path that reads one: the loader, the manager's fallback, `show`,
`export`, `average` and a backup's restore.

The corpus is made here, by the test itself: HDF5 datasets stored outside the file (external
storage, virtual datasets, soft and external links), shape, chunk and zip bombs, truncations, zip
members lying about their size or CRC, a filter plugin, JSON nested too deeply, a FIFO, and files
that are odd but honest (compact, big-endian and compressed datasets, a link loop, a deflated
member, weights whose bytes spell a zip signature). Each must be refused with an error that names
the file, or loaded equal to what Keras loads; the bytes of a "secret" file next to them must never
reach a model. A crafted folder brings its own records, so the records here match the files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from zlib_ng import zlib_ng

from keras_ckpt import CheckpointManager
from keras_ckpt.cli import main
from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format import backup_file, h5read, h5write, snapshot
from keras_ckpt.store.local import seal_file

KERNEL = "layers/dense/vars/0"  # the first Dense layer's (4, 3) float32 kernel
SECRET = b"SECRET-BYTES-OF-ANOTHER-FILE-48B" + b"\x42" * 16  # 48 bytes: one (4, 3) float32 kernel
BOMB = 5 << 30  # what the zip bombs declare, as in Keras's own test (5.00 GB)


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def state(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.weights + model.optimizer.variables]


# ------------------------------------------------------------------------------ the zip toolkit


def deflated_zeros(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of `size` zero bytes (about size / 1000 bytes), and their CRC-32."""
    compressor = zlib_ng.compressobj(6, zlib_ng.DEFLATED, -15)
    chunk = bytes(64 << 20)
    parts, crc, left = [], 0, size
    while left:
        piece = chunk[: min(left, len(chunk))]
        parts.append(compressor.compress(piece))
        crc = zlib_ng.crc32(piece, crc)
        left -= len(piece)
    parts.append(compressor.flush())
    return b"".join(parts), crc


@dataclass
class Member:
    name: str
    data: bytes  # as stored in the file
    size: int  # as declared (uncompressed)
    crc: int
    method: int = 0  # 0 stored, 8 deflated
    claimed: int | None = None  # the stored size the headers declare, if not len(data)


def member(name: str, data: bytes) -> Member:
    return Member(name, data, len(data), zlib_ng.crc32(data))


def zip_bytes(members: list[Member], *, first_at: int | None = None) -> bytes:
    """A zip of `members` as declared (zip64 sizes where they exceed 32 bits), by hand: zipfile
    would compress a bomb itself, and never writes a lie. With `first_at`, the first member's
    data starts at that offset (keras-ckpt's layout: its HDF5 member at 4096)."""
    body, central = b"", b""
    for i, m in enumerate(members):
        name = m.name.encode()
        stored = len(m.data) if m.claimed is None else m.claimed
        big = m.size >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, m.size, stored) if big else b""
        central_extra = extra
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if big else (stored, m.size)
        if i == 0 and first_at is not None:
            pad = first_at - 30 - len(name) - len(extra) - 4
            extra += struct.pack("<HH", 0x434B, pad) + bytes(pad)
        offset = len(body)
        body += struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            45,
            0,
            m.method,
            0,
            0x21,
            m.crc,
            *sizes,
            len(name),
            len(extra),
        )
        body += name + extra + m.data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            45,
            45,
            0,
            m.method,
            0,
            0x21,
            m.crc,
            *sizes,
            len(name),
            len(central_extra),
            0,
            0,
            0,
            0,
            offset,
        )
        central += name + central_extra
    end = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(body), 0
    )
    return body + central + end


def keras_members(path: Path) -> list[Member]:
    with zipfile.ZipFile(path) as archive:
        return [member(name, archive.read(name)) for name in archive.namelist()]


def replace(members: list[Member], name: str, new: Member) -> list[Member]:
    return [new if m.name == name else m for m in members]


# ---------------------------------------------------------------------------- HDF5 crafting


def craft_weights(source: Path, target: Path, edit) -> Path:
    """A copy of weights file `source` with `edit(h5py.File)` applied."""
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def low_level_dataset(group: h5py.Group, name: str, value: np.ndarray, dcpl) -> None:
    space = h5py.h5s.create_simple(value.shape)
    dsid = h5py.h5d.create(group.id, name.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
    h5py.Dataset(dsid)[...] = value


def _external(folder: Path):
    def edit(f):
        del f[KERNEL]
        f.create_dataset(KERNEL, (4, 3), "f4", external=[(str(folder / "secret.bin"), 0, 48)])

    return edit


def _virtual(folder: Path):
    def edit(f):
        del f[KERNEL]
        layout = h5py.VirtualLayout((4, 3), "f4")
        layout[...] = h5py.VirtualSource(str(folder / "secret.h5"), "secret", shape=(4, 3))
        f.create_virtual_dataset(KERNEL, layout)

    return edit


def _soft_link(f):
    del f[KERNEL]
    f[KERNEL] = h5py.SoftLink("/layers/dense/vars/1")


def _external_link(folder: Path):
    def edit(f):
        del f[KERNEL]
        f[KERNEL] = h5py.ExternalLink(str(folder / "secret.h5"), "secret")

    return edit


def _shape_bomb(f):
    del f[KERNEL]
    f.create_dataset(KERNEL, (1 << 31, 4), "f4", chunks=(1 << 16, 4), compression="gzip")


def _chunk_bomb(f):
    value = f[KERNEL][()]
    del f[KERNEL]
    f.create_dataset(
        KERNEL, data=value, maxshape=(None, None), chunks=(1 << 16, 1 << 10), compression="gzip"
    )


def _filter_plugin(f):
    value = f[KERNEL][()]
    del f[KERNEL]
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(value.shape)
    dcpl.set_filter(32004, h5py.h5z.FLAG_OPTIONAL)  # LZ4: a plugin HDF5 would look for on disk
    low_level_dataset(f["layers/dense/vars"], "0", value, dcpl)


def _compact(f):
    value = f[KERNEL][()]
    del f[KERNEL]
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    low_level_dataset(f["layers/dense/vars"], "0", value, dcpl)


def _big_endian(f):
    value = f[KERNEL][()]
    del f[KERNEL]
    f.create_dataset(KERNEL, data=value.astype(">f4"))


def _gzip(f):
    for path in ("layers/dense/vars/0", "layers/dense_1/vars/0", "optimizer/vars/2"):
        value = f[path][()]
        del f[path]
        f.create_dataset(path, data=value, chunks=True, compression="gzip")


def _link_loop(f):
    f["layers/dense/loop"] = f["/"]  # a hard link back to the root


# ------------------------------------------------------------------------------ the corpus


@dataclass(frozen=True)
class Crafted:
    name: str
    refused: str | None  # regex of the refusal; None: loads as Keras loads it
    keras_refuses: bool = True  # Keras refuses it too (else it loads it, or allocates the bomb)
    model_only: bool = False  # a `.keras` part only loading a model reads: its weights load


CORPUS = [
    Crafted("external.weights.h5", r"Not allowed: H5 file with external Dataset"),
    Crafted("virtual.weights.h5", r"Not allowed: H5 file with virtual Dataset"),
    Crafted("soft-link.weights.h5", r"Not allowed: H5 file with SoftLink"),
    Crafted("external-link.weights.h5", r"Not allowed: H5 file with ExternalLink"),
    Crafted("shape-bomb.weights.h5", r"Not allowed: H5 dataset .* declares 32\.00 GB"),
    Crafted("chunk-bomb.weights.h5", r"Not allowed: .* declares chunks of", keras_refuses=False),
    Crafted("filter-plugin.weights.h5", r"Not allowed: .* HDF5 filter 32004", keras_refuses=False),
    Crafted("truncated.weights.h5", r"not a readable HDF5 file"),
    Crafted("userblock.weights.h5", r"neither an HDF5 file nor a zip", keras_refuses=False),
    Crafted("random.weights.h5", r"neither an HDF5 file nor a zip"),
    Crafted("empty.weights.h5", r"neither an HDF5 file nor a zip"),
    Crafted("compact.weights.h5", None),
    Crafted("big-endian.weights.h5", None),
    Crafted("gzip.weights.h5", None),
    Crafted("link-loop.weights.h5", None),
    Crafted("zip-signature.weights.h5", None),
    Crafted(
        "config-bomb.keras",
        r"Not allowed: ZIP member 'config.json' declares 5\.00 GB",
        model_only=True,
    ),
    Crafted("weights-bomb.keras", r"Not allowed: ZIP member 'model.weights.h5' declares 5\.00"),
    Crafted(
        "assets-bomb.keras",
        r"Not allowed: archive member 'assets/x.bin' declares 5\.00",
        model_only=True,
    ),
    Crafted("lying-size.keras", r"zip member model.weights.h5 does not lie where"),
    Crafted("bad-crc.keras", r"bad CRC-32 for zip member model.weights.h5"),
    Crafted("lying-deflated.keras", r"zip member model.weights.h5", keras_refuses=False),
    Crafted("external-inside.keras", r"Not allowed: H5 file with external Dataset"),
    Crafted("deep-config.keras", r"config.json is not JSON", model_only=True),
    Crafted("truncated.keras", r"not a readable zip"),
    Crafted("keras-written.keras", None),
    Crafted("deflated-weights.keras", None),
]
REFUSED = [c for c in CORPUS if c.refused]


def zip_signature_model() -> keras.Model:
    """A model whose second kernel's bytes spell a zip's end record (`PK\\x05\\x06`, one entry,
    a 46-byte central directory): what `zipfile.is_zipfile` looks for in a file's last 64 KiB.
    Each float32 is legal (tiny ones; quantized int8 weights spell it far more easily)."""
    model = tiny_model()
    record = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, 46, 0, 0) + b"\0\0"
    model.layers[1].kernel.assign(np.frombuffer(record, "<f4").reshape(3, 2))
    return model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crafted")
    (folder / "secret.bin").write_bytes(SECRET)
    with h5py.File(folder / "secret.h5", "w") as f:
        f["secret"] = np.frombuffer(SECRET, "f4").reshape(4, 3)
    model = tiny_model()
    clean = folder / "clean.weights.h5"
    model.save_weights(clean)
    edits = {
        "external": _external(folder),
        "virtual": _virtual(folder),
        "soft-link": _soft_link,
        "external-link": _external_link(folder),
        "shape-bomb": _shape_bomb,
        "chunk-bomb": _chunk_bomb,
        "filter-plugin": _filter_plugin,
        "compact": _compact,
        "big-endian": _big_endian,
        "gzip": _gzip,
        "link-loop": _link_loop,
    }
    for stem, edit in edits.items():
        craft_weights(clean, folder / f"{stem}.weights.h5", edit)
    raw = clean.read_bytes()
    (folder / "truncated.weights.h5").write_bytes(raw[: len(raw) * 2 // 3])
    (folder / "random.weights.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "empty.weights.h5").write_bytes(b"")
    with (
        h5py.File(folder / "userblock.weights.h5", "w", userblock_size=512) as f,
        h5py.File(clean) as c,
    ):
        for key in c:
            c.copy(key, f)
    zip_signature_model().save_weights(folder / "zip-signature.weights.h5")

    model.save(folder / "keras-written.keras")
    members = keras_members(folder / "keras-written.keras")
    h5write.write_snapshot(snapshot.take(model, weights_only=False), str(folder / "ours.keras"))
    ours = keras_members(folder / "ours.keras")
    assert ours[0].name == "model.weights.h5"
    bomb, bomb_crc = deflated_zeros(BOMB)
    config_bomb = Member("config.json", bomb, BOMB, bomb_crc, 8)  # in keras-ckpt's own layout:
    (folder / "config-bomb.keras").write_bytes(  # its weights are read in place, then config.json
        zip_bytes(replace(ours, "config.json", config_bomb), first_at=4096)
    )
    weights_bomb = Member("model.weights.h5", bomb, BOMB, bomb_crc, 8)
    (folder / "weights-bomb.keras").write_bytes(
        zip_bytes(replace(members, "model.weights.h5", weights_bomb))
    )
    assets = ours + [Member("assets/x.bin", bomb, BOMB, bomb_crc, 8)]
    (folder / "assets-bomb.keras").write_bytes(zip_bytes(assets, first_at=4096))
    weights = next(m for m in members if m.name == "model.weights.h5")
    lying = Member(weights.name, weights.data, weights.size * 10, weights.crc)
    lying.claimed = weights.size * 10  # a stored member declaring 10x the bytes it holds
    (folder / "lying-size.keras").write_bytes(
        zip_bytes(replace(members, "model.weights.h5", lying))
    )
    compressor = zlib_ng.compressobj(6, zlib_ng.DEFLATED, -15)
    deflated = compressor.compress(weights.data) + compressor.flush()
    inflating = Member(weights.name, deflated, weights.size * 10, weights.crc, 8)  # 10x, < 4 GiB
    (folder / "lying-deflated.keras").write_bytes(
        zip_bytes(replace(members, "model.weights.h5", inflating))
    )
    flipped = bytearray(weights.data)
    flipped[len(flipped) // 2] ^= 0xFF
    bad_crc = Member("model.weights.h5", bytes(flipped), weights.size, weights.crc)
    (folder / "bad-crc.keras").write_bytes(zip_bytes(replace(members, "model.weights.h5", bad_crc)))
    inside = member("model.weights.h5", (folder / "external.weights.h5").read_bytes())
    (folder / "external-inside.keras").write_bytes(
        zip_bytes(replace(members, "model.weights.h5", inside))
    )
    deep = member("config.json", b"[" * 200_000 + b"]" * 200_000)
    (folder / "deep-config.keras").write_bytes(zip_bytes(replace(members, "config.json", deep)))
    raw = (folder / "keras-written.keras").read_bytes()
    (folder / "truncated.keras").write_bytes(raw[: len(raw) // 2])
    with zipfile.ZipFile(folder / "deflated-weights.keras", "w", zipfile.ZIP_DEFLATED) as z:
        for m in members:
            z.writestr(m.name, m.data)
    return folder


def no_secret(model: keras.Model) -> None:
    for array in state(model):
        assert SECRET[:16] not in array.tobytes()


def keras_load(path: Path, target: keras.Model | None):
    """What Keras does with the file: the model (or weights) it loads, or the error it raises."""
    try:
        if target is None:
            return keras.saving.load_model(path)
        target.load_weights(path)
        return target
    except (Exception, RecursionError) as e:
        return e


def check_refused(crafted: Crafted, path: Path, how: str) -> None:
    ours = tiny_model(seed=1)
    before = state(ours)
    with pytest.raises(CorruptCheckpointError, match=crafted.refused) as caught:
        if how == "model":
            h5read.load_model(path)
        else:
            h5read.load_weights(ours, path)
    assert crafted.name in str(caught.value)
    for a, b in zip(state(ours), before, strict=True):  # nothing was assigned
        np.testing.assert_array_equal(a, b)
    if crafted.keras_refuses:
        theirs = keras_load(path, tiny_model(seed=2) if how == "weights" else None)
        assert isinstance(theirs, BaseException), f"Keras loads {crafted.name}"


def check_loaded_as_keras(path: Path, how: str) -> None:
    if how == "model":
        ours = h5read.load_model(path)
    else:
        ours = tiny_model(seed=1)
        h5read.load_weights(ours, path)
    theirs = keras_load(path, tiny_model(seed=2) if how == "weights" else None)
    assert not isinstance(theirs, BaseException), theirs
    no_secret(ours)
    for a, b in zip(state(ours), state(theirs), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("crafted", CORPUS, ids=lambda c: c.name)
def test_every_crafted_file_is_refused_clearly_or_loaded_as_keras_loads_it(corpus, crafted):
    path = corpus / crafted.name
    for how in ["weights", "model"] if path.suffix == ".keras" else ["weights"]:
        if crafted.refused and (how == "model" or not crafted.model_only):
            check_refused(crafted, path, how)
        else:
            check_loaded_as_keras(path, how)


def test_the_secret_file_is_what_keras_would_have_refused_to_read(corpus):
    """The corpus is live: h5py itself, asked plainly, follows the external storage and the
    virtual dataset to the secret, which is why they must be refused before any read."""
    for name in ("external.weights.h5", "virtual.weights.h5"):
        with h5py.File(corpus / name) as f:
            assert f[KERNEL][()].tobytes() == SECRET


# --------------------------------------------------------------------- through a directory


def crafted_directory(folder: Path, crafted: Crafted, corpus: Path) -> CheckpointManager:
    """A checkpoint directory whose newest checkpoint is the crafted file, with a record that
    matches it, and an older good one."""
    manager = CheckpointManager(folder)
    suffix = ".keras" if crafted.name.endswith(".keras") else ".weights.h5"
    kind = "model" if suffix == ".keras" else "weights"
    good = folder.with_name(f"{folder.name}-good")  # not in the directory: no record names it
    good.mkdir(parents=True)
    if suffix == ".keras":
        tiny_model(seed=3).save(good / f"a{suffix}")
    else:
        tiny_model(seed=3).save_weights(good / f"a{suffix}")
    for name, source in (
        (f"a{suffix}", good / f"a{suffix}"),
        (f"b{suffix}", corpus / crafted.name),
    ):
        with manager.stage() as stage:
            staged = os.path.join(stage, name)
            Path(staged).write_bytes(Path(source).read_bytes())
            manager.commit({name: staged}, name=name, kind=kind, metrics={"val_loss": 1.0})
    manager.close()
    return manager


@pytest.mark.parametrize("crafted", REFUSED, ids=lambda c: c.name)
def test_a_crafted_newest_checkpoint_is_skipped_for_the_previous_good_one(
    corpus, tmp_path, crafted
):
    manager = crafted_directory(tmp_path, crafted, corpus)
    suffix = ".keras" if crafted.name.endswith(".keras") else ".weights.h5"
    expected = state(tiny_model(seed=3))
    with pytest.warns(UserWarning, match=rf"Checkpoint b{suffix} in .* is damaged"):
        if suffix == ".keras":
            loaded = manager.load_model("latest")
        else:
            loaded = tiny_model(seed=1)
            assert manager.load_weights(loaded, "latest").name == f"a{suffix}"
    for a, b in zip(state(loaded), expected, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CorruptCheckpointError, match=crafted.refused):
        if suffix == ".keras":
            manager.load_model(f"b{suffix}")
        else:
            manager.load_weights(tiny_model(seed=1), f"b{suffix}")


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


# `show` reads the JSON members and the weights' layout, not the assets; a file of no format it
# knows, it shows as such.
SHOW_UNKNOWN = {"userblock.weights.h5", "random.weights.h5", "empty.weights.h5"}


@pytest.mark.parametrize("crafted", REFUSED, ids=lambda c: c.name)
def test_show_export_and_average_refuse_a_crafted_checkpoint(corpus, tmp_path, crafted):
    directory = tmp_path / "run"
    crafted_directory(directory, crafted, corpus)
    suffix = ".keras" if crafted.name.endswith(".keras") else ".weights.h5"
    name = f"b{suffix}"
    code, out, err = cli("show", directory, name, "--json")
    if crafted.name in SHOW_UNKNOWN or crafted.name == "assets-bomb.keras":
        assert code == 0, err
        unknown = json.loads(out)["contents"]["format"] == "unknown"
        assert unknown == (crafted.name in SHOW_UNKNOWN)
    else:
        assert code == 2 and name in err
    for args, output in (
        (("export", directory, name, tmp_path / f"out{suffix}"), tmp_path / f"out{suffix}"),
        (
            ("average", directory, f"a{suffix},{name}", tmp_path / f"avg{suffix}"),
            tmp_path / f"avg{suffix}",
        ),
    ):
        code, _, err = cli(*args)
        assert code == 2, (args, err)
        assert err.startswith("keras-ckpt: error: ") and err.count("\n") == 1
        assert name in err and "Traceback" not in err
        assert not output.exists()


def test_average_never_copies_another_files_bytes(corpus, tmp_path):
    """`average` once copied what external storage pointed to into its output."""
    crafted = next(c for c in CORPUS if c.name == "external.weights.h5")
    crafted_directory(tmp_path / "run", crafted, corpus)
    code, _, err = cli(
        "average", tmp_path / "run", "a.weights.h5,b.weights.h5", tmp_path / "o.weights.h5"
    )
    assert code == 2 and "Not allowed: H5 file with external Dataset" in err
    assert not (tmp_path / "o.weights.h5").exists()


def test_weights_spelling_a_zip_signature_are_shown_exported_and_averaged(corpus, tmp_path):
    """`zipfile.is_zipfile` takes such a `.weights.h5` for a zip; what the file is, is told by its
    first bytes (HDF5's signature)."""
    crafted = next(c for c in CORPUS if c.name == "zip-signature.weights.h5")
    directory = tmp_path / "run"
    crafted_directory(directory, crafted, corpus)
    code, out, err = cli("show", directory, "b.weights.h5", "--json")
    assert code == 0, err
    assert json.loads(out)["contents"]["format"] == "HDF5 weights file"
    code, _, err = cli("export", directory, "b.weights.h5", tmp_path / "out.weights.h5")
    assert code == 0, err
    assert (tmp_path / "out.weights.h5").read_bytes() == (corpus / crafted.name).read_bytes()
    code, _, err = cli(
        "average", directory, "a.weights.h5,b.weights.h5", tmp_path / "avg.weights.h5"
    )
    assert code == 0, err
    averaged = tiny_model(seed=1)
    averaged.load_weights(tmp_path / "avg.weights.h5")


@pytest.mark.parametrize(
    "name",
    ["external.weights.h5", "virtual.weights.h5", "soft-link.weights.h5", "shape-bomb.weights.h5"],
)
def test_a_backup_file_is_checked_like_any_other(corpus, tmp_path, name):
    with pytest.raises(
        backup_file.BackupFileError, match=rf"Cannot read backup file .*{name}: Not"
    ):
        backup_file.read(corpus / name, seal_file(corpus / name, sync=False))


def without_blocking_on(fifo: Path, load):
    """`load()`'s result or error; fails the test (releasing it) if it blocks on the FIFO."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = load()
        except BaseException as e:  # handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():
        with open(fifo, "wb"):  # a writer comes: the blocked open returns
            pass
        thread.join()
        pytest.fail(f"loading blocked on the FIFO {fifo}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_a_fifo_in_place_of_a_checkpoint_is_refused_at_once(corpus, tmp_path):
    """Keras would block forever opening it: no writer ever comes."""
    crafted = next(c for c in CORPUS if c.name == "gzip.weights.h5")
    manager = crafted_directory(tmp_path / "run", crafted, corpus)
    fifo = tmp_path / "run" / "b.weights.h5"
    fifo.unlink()
    os.mkfifo(fifo)
    with pytest.raises(CorruptCheckpointError, match=r"b.weights.h5: cannot read it \(.*not a"):
        without_blocking_on(
            fifo, lambda: h5read.load_weights(tiny_model(seed=1), fifo, name="b.weights.h5")
        )
    with pytest.warns(UserWarning, match=r"b.weights.h5 in .* is damaged"):
        record = without_blocking_on(
            fifo, lambda: manager.load_weights(tiny_model(seed=1), "latest")
        )
    assert record.name == "a.weights.h5"
    code, _, err = without_blocking_on(fifo, lambda: cli("show", tmp_path / "run", "b.weights.h5"))
    assert code == 2 and "not a regular file" in err


def test_a_zip_bomb_is_refused_by_its_declared_size_before_anything_is_inflated(corpus):
    """The issue's case: a 5 MB `.keras` whose config.json declares 5 GiB."""
    assert (corpus / "config-bomb.keras").stat().st_size < 6 << 20
    with pytest.raises(CorruptCheckpointError, match=r"declares 5\.00 GB but only \d\.\d\d MB"):
        h5read.load_model(corpus / "config-bomb.keras")
