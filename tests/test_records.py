"""The record: its JSON round trip, what a malformed record raises, names and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keras_ckpt.errors import RecordFormatError
from keras_ckpt.records import (
    FORMAT_VERSION,
    FileEntry,
    Record,
    clean_metrics,
    validate_name,
    validate_path,
)

SOURCE = "/runs/exp1/.keras_ckpt/model-001.keras.json"


def make_record(**overrides) -> Record:
    fields = dict(
        name="model-001.keras",
        kind="model",
        files=(
            FileEntry("model-001.keras", 1234, "crc32c:0badf00d"),
            FileEntry("extra/opt.npz", 10, "crc32c:00000001"),
        ),
        epoch=3,
        step=7,
        global_step=31,
        wall_time=1_700_000_000.5,
        metrics={"loss": 0.25, "val_loss": 0.5},
        owner="ModelCheckpoint:model-{epoch:03d}.keras",
        owner_state={"best": 0.5, "monitor": "val_loss"},
        keras_version="3.15.1",
        backend="tensorflow",
        sequence=4,
    )
    fields.update(overrides)
    return Record(**fields)


def record_dict(**overrides) -> dict:
    data = json.loads(make_record().to_json())
    data.update(overrides)
    return data


def parse(data) -> Record:
    text = data if isinstance(data, (str, bytes)) else json.dumps(data)
    return Record.from_json(text, source=SOURCE)


def test_round_trip_through_json_gives_an_equal_record():
    record = make_record()
    assert parse(record.to_json()) == record


def test_json_is_human_readable_and_names_the_format_version():
    data = json.loads(make_record().to_json())
    assert data["format_version"] == FORMAT_VERSION
    assert data["files"][0] == {
        "path": "model-001.keras",
        "size": 1234,
        "checksum": "crc32c:0badf00d",
    }


def test_size_and_path_come_from_the_files():
    record = make_record()
    assert record.size == 1244
    assert record.path == "model-001.keras"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{", id="truncated"),
        pytest.param("", id="empty"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param("[1, 2]", id="not-an-object"),
    ],
)
def test_malformed_json_raises_record_format_error_naming_the_file(text):
    with pytest.raises(RecordFormatError, match="Unreadable checkpoint record .*model-001"):
        parse(text)


@pytest.mark.parametrize(
    "field", ["name", "kind", "files", "epoch", "step", "global_step", "wall_time", "sequence"]
)
def test_missing_field_raises_record_format_error_naming_the_file_and_field(field):
    data = record_dict()
    del data[field]
    with pytest.raises(RecordFormatError, match=f"Malformed checkpoint record {SOURCE}.*{field}"):
        parse(data)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"epoch": "3"}, id="epoch-str"),
        pytest.param({"epoch": 1.7}, id="epoch-float"),
        pytest.param({"step": True}, id="step-bool"),
        pytest.param({"sequence": None}, id="sequence-null"),
        pytest.param({"wall_time": "yesterday"}, id="wall_time-str"),
        pytest.param({"name": 5}, id="name-int"),
        pytest.param({"kind": ["model"]}, id="kind-list"),
        pytest.param({"files": "model-001.keras"}, id="files-str"),
        pytest.param({"files": [["model-001.keras", 1, "x"]]}, id="file-not-object"),
        pytest.param({"files": [{"path": None, "size": 1, "checksum": "x"}]}, id="path-null"),
        pytest.param({"files": [{"path": "a", "size": "1", "checksum": "x"}]}, id="size-str"),
        pytest.param({"metrics": {"loss": "low"}}, id="metric-str"),
        pytest.param({"metrics": [["loss", 1.0]]}, id="metrics-list"),
        pytest.param({"owner": 5}, id="owner-int"),
        pytest.param({"owner_state": "best"}, id="owner_state-str"),
    ],
)
def test_wrong_type_raises_record_format_error_naming_the_file(overrides):
    with pytest.raises(RecordFormatError, match=f"Malformed checkpoint record {SOURCE}"):
        parse(record_dict(**overrides))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_metric_raises_record_format_error(constant):
    text = make_record().to_json().replace('"loss": 0.25', f'"loss": {constant}')
    with pytest.raises(RecordFormatError, match=f"Unreadable checkpoint record {SOURCE}"):
        parse(text)


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1E400"])
@pytest.mark.parametrize("field", ['"loss": 0.25', '"wall_time": 1700000000.5'])
def test_a_number_too_large_for_a_float_raises_record_format_error(field, number):
    """Python reads `1e999` as infinity, which `to_json` (allow_nan=False) then cannot write."""
    text = make_record().to_json()
    assert field in text
    text = text.replace(field, field.split(":")[0] + ": " + number)
    with pytest.raises(RecordFormatError, match=f"{SOURCE}: .*{number} is out of range"):
        parse(text)


def test_an_integer_too_large_for_a_float_raises_record_format_error():
    text = make_record().to_json().replace('"loss": 0.25', f'"loss": {10**400}')
    with pytest.raises(RecordFormatError, match=f"Malformed checkpoint record {SOURCE}"):
        parse(text)


@pytest.mark.parametrize("path", ["../outside.keras", "/etc/passwd", "a//b", ".keras_ckpt/x"])
def test_file_path_escaping_the_directory_raises_record_format_error(path):
    files = [{"path": path, "size": 1, "checksum": "crc32c:00000000"}]
    with pytest.raises(RecordFormatError, match="Invalid checkpoint file path"):
        parse(record_dict(files=files))


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"kind": "pickle"}, id="unknown-kind"),
        pytest.param({"files": []}, id="no-files"),
    ],
)
def test_unknown_kind_or_no_files_raises_record_format_error(overrides):
    with pytest.raises(RecordFormatError, match=f"Malformed checkpoint record {SOURCE}: kind="):
        parse(record_dict(**overrides))


@pytest.mark.parametrize("version", [2, 0, None, "1", True])
def test_unknown_format_version_raises_record_format_error_saying_to_upgrade(version):
    with pytest.raises(
        RecordFormatError, match=f"{SOURCE} has format_version=.*Upgrade keras-ckpt"
    ):
        parse(record_dict(format_version=version))


def test_optional_fields_may_be_missing():
    data = record_dict()
    for optional in ("metrics", "owner", "owner_state", "keras_version", "backend"):
        del data[optional]
    record = parse(data)
    assert (record.metrics, record.owner, record.owner_state) == ({}, None, {})


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "a\\b", "a\0b", None, 3])
def test_validate_name_rejects_what_is_not_one_safe_file_name(name):
    with pytest.raises(ValueError, match=r"Invalid checkpoint name.*Received: name="):
        validate_name(name)


@pytest.mark.parametrize("name", ["model-001.keras", "backup", "a.b.weights.h5", "x..y"])
def test_validate_name_accepts_a_normal_name(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("path", ["model.keras", "sub/dir/model.keras", "a..b/c"])
def test_validate_path_accepts_a_relative_path_inside_the_directory(path):
    assert validate_path(path) == path


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "./a", "a/", "a\\b", ".keras_ckpt/r"])
def test_validate_path_rejects_a_path_that_escapes_or_enters_the_meta_folder(path):
    with pytest.raises(ValueError, match="Invalid checkpoint file path"):
        validate_path(path)


def test_clean_metrics_keeps_finite_numbers_as_floats():
    cleaned = clean_metrics({"loss": 1, "acc": np.float32(0.5), "lr": np.array(0.001)})
    assert cleaned == pytest.approx({"loss": 1.0, "acc": 0.5, "lr": 0.001})
    assert all(type(v) is float for v in cleaned.values())


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -float("inf"), np.float32("nan"), "0.5", b"1", True, None, [1]],
)
def test_clean_metrics_drops_non_finite_and_non_numeric_values(value):
    assert clean_metrics({"bad": value, "loss": 0.5}) == {"loss": 0.5}


def test_clean_metrics_of_none_is_empty():
    assert clean_metrics(None) == {}
