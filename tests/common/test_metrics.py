"""common.metrics: JSON lines + TensorBoard + W&B offline, truncated at the resume point."""

from __future__ import annotations

import json
import math
import struct
import time

import pytest

from common.metrics import MetricsLog, read_events, read_jsonl, scalars_of, wandb_run_id


def test_scalars_are_flattened_with_slashes_and_non_numbers_left_out():
    rec = {"train/loss": 1.5, "eval": {"top1": 40.0, "top5": 70}, "type": "step", "ok": True,
           "x": math.nan, "name": "a"}  # fmt: skip
    assert scalars_of(rec) == {"train/loss": 1.5, "eval/top1": 40.0, "eval/top5": 70.0}


def test_a_resumed_log_drops_the_points_after_the_resume_point(tmp_path):
    """Iterations 1..10 logged, the state saved at 6: the resumed run logs 7..12 again. The
    JSON lines and TensorBoard's reading of the event files hold each iteration once, with
    the resumed run's values."""
    with MetricsLog(tmp_path) as m:
        for i in range(1, 11):
            m.write({"train/loss": float(i), "lr": 0.1}, i, epoch=i // 4)
    with open(tmp_path / "train_metrics.jsonl", "a") as f:
        f.write('{"iteration": 11, "train/lo')  # a line cut by a kill
    with MetricsLog(tmp_path, resume=6) as m:
        for i in range(7, 13):
            m.write({"train/loss": 100.0 + i, "lr": 0.01}, i, epoch=i // 4)
    lines = read_jsonl(tmp_path / "train_metrics.jsonl")
    assert [x["iteration"] for x in lines] == list(range(1, 13))
    assert [x["train/loss"] for x in lines] == [1, 2, 3, 4, 5, 6] + [107, 108, 109, 110, 111, 112]
    assert lines[0]["epoch"] == 0 and lines[-1]["epoch"] == 3
    ev = read_events(tmp_path)
    assert set(ev) == {"train/loss", "lr"}
    assert ev["train/loss"] == [(x["iteration"], x["train/loss"]) for x in lines]
    assert [v for _, v in ev["lr"]] == pytest.approx([0.1] * 6 + [0.01] * 6)


def test_a_fresh_start_removes_an_earlier_attempts_points(tmp_path):
    with MetricsLog(tmp_path) as m:
        m.write({"train/loss": 5.0}, 1)
        m.write({"train/loss": 4.0}, 2)
    with MetricsLog(tmp_path) as m:  # resume None: the run starts over
        m.write({"train/loss": 9.0}, 1)
    assert read_jsonl(tmp_path / "train_metrics.jsonl") == [{"iteration": 1, "train/loss": 9.0}]
    assert read_events(tmp_path) == {"train/loss": [(1, 9.0)]}
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_logger_none_writes_json_lines_only(tmp_path):
    with MetricsLog(tmp_path, logger="none") as m:
        m.write({"eval/top1": 12.5}, 3)
    assert read_jsonl(tmp_path / "train_metrics.jsonl") == [{"iteration": 3, "eval/top1": 12.5}]
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    with pytest.raises(ValueError, match="choose one of tensorboard, wandb, none"):
        MetricsLog(tmp_path, logger="tb")


def _wandb_records(path):
    """The records of a W&B transaction log (``run-<id>.wandb``: a ':W&B' header, then
    LevelDB-log blocks of 32 KiB, each record chunk with a (crc, length, type) header)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
    return out


def _finished_wandb_records(path, pb, timeout=60.0):
    """The parsed records of a W&B transaction log once its ``exit`` record is there.

    ``wandb.finish()`` can return before W&B's service process has flushed the file (seen on
    a loaded 2-core machine), so the log is read again until it holds the run's end, for at
    most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    from google.protobuf.message import DecodeError

    while True:
        records = []
        try:
            for raw in _wandb_records(path):
                r = pb.Record()
                r.ParseFromString(raw)
                records.append(r)
        except (AssertionError, DecodeError):  # a file still being written
            if time.monotonic() > deadline:
                raise
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            assert "exit" in kinds and "run" in kinds, f"{path}: records {kinds}"
            return records
        time.sleep(0.5)


def test_wandb_offline_records_the_same_keys_group_and_name(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2 as pb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder = tmp_path / "linear_care" / "care_r50" / "seed0"
    with MetricsLog(folder, logger="wandb", group="care_r50", name="linear_care/seed0",
                    config={"seed": 1000}) as m:  # fmt: skip
        for i in (1, 2, 3):
            m.write({"train/loss": 1.0 / i, "lr": 0.1, "eval": {"top1": 50.0 + i}}, i, epoch=i)
    assert wandb.run is None  # finished
    (log,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    records = _finished_wandb_records(log, pb)
    history, run = [], None
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
        elif kind == "run":
            run = r.run
    assert run.run_group == "care_r50" and run.display_name == "linear_care/seed0"
    assert run.run_id == wandb_run_id(folder)
    lines = read_jsonl(folder / "train_metrics.jsonl")
    assert [h["_step"] for h in history] == [x["iteration"] for x in lines]
    for h, x in zip(history, lines):
        values = scalars_of(x)  # train/loss, lr, eval/top1, epoch (and the iteration)
        assert values.pop("iteration") == h["_step"]
        assert {k: h[k] for k in values} == pytest.approx(values)
