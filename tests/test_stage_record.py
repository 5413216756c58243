"""The stage record: frozen, saved by the run folder and read back as the same record."""

import dataclasses

import pytest

from edgekd.stages.record import StageRecord


def _record(**changes) -> StageRecord:
    fields = dict(name="prune", precision="fp32", accuracy=0.9, test_images=4, test_correct="0f", val_accuracy=0.88,
                  params=1000, macs=20000, size_bytes=4096, onnx="stages/prune.onnx", seconds=1.5,
                  details={"parity": {"max_abs_diff": 1e-5}})
    return StageRecord(**{**fields, **changes})


def test_a_saved_record_resumes_as_the_same_record_marked_resumed():
    record = _record()
    saved = record.as_saved()
    assert "resumed" not in saved  # the folder keeps what the stage made, not how this run got it
    again = StageRecord.from_folder(saved)
    assert again == dataclasses.replace(record, resumed=True)
    assert again.as_dict() == {**saved, "resumed": True}


def test_a_record_cannot_be_changed_after_the_fact():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _record().accuracy = 1.0


def test_a_marker_without_a_field_reruns_its_stage_instead_of_failing():
    saved = _record().as_saved()
    del saved["size_bytes"]
    assert StageRecord.from_folder(saved) is None and StageRecord.from_folder(None) is None
    assert StageRecord.from_folder({**_record().as_saved(), "latency_ms": {}}) is not None  # extra keys: ignored
