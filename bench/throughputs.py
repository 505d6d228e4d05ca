"""The measured throughputs a plan's GPU-hours come from: ``bench/throughputs.json``.

One record per (rate key, GPU kind, precision): images/s, what was timed (``runner``: a
runner job's overall speed; ``steady``: its last iterations; ``bare``: the train step
alone; ``estimate``: not a measurement, with ``scales_from`` naming what it is derived
from), the date, the command that printed it and the machine. The speed benchmarks under
``benchmarks/speed/`` add or replace records with ``--record``; the plan prefers a runner
figure, then a steady-state one, then the bare step, then an estimate.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from common.atomic import atomic_write_json
from common.cli import BadInput, InputNotFound

DEFAULT_FILE = Path(__file__).resolve().parent / "throughputs.json"
PREFERENCE = ("runner", "steady", "bare", "estimate")  # which record a plan uses first
FORMAT = 1


@dataclass(frozen=True)
class Throughput:
    """One record: ``images_per_s`` of ``key`` (a protocol, or a phase such as
    ``feature_extraction``) on ``gpu`` (``H100``, ``H200``, ``cpu``) in ``precision``."""

    key: str
    gpu: str
    precision: str  # fp32 | amp
    images_per_s: float
    what: str  # runner | steady | bare | estimate
    date: str
    command: str
    machine: str = ""
    scales_from: str = ""  # an estimate: what it is derived from

    @property
    def measured(self) -> bool:
        return self.what != "estimate"

    def source(self) -> str:
        """Where the figure comes from, in a few words (the plan's column)."""
        if not self.measured:
            return f"estimate ({self.scales_from})"
        return f"{self.gpu} {self.what} {self.date}"


def gpu_kind(name: str) -> str:
    """The kind of a device name: ``NVIDIA H100 80GB HBM3`` -> ``H100``; ``cpu`` for CPUs."""
    if not name or name.lower() == "cpu":
        return "cpu"
    for word in name.replace("-", " ").split():
        if word[:1].isalpha() and any(ch.isdigit() for ch in word) and word.upper() != "NVIDIA":
            return word.upper()
    return name


def load(path: str | Path = DEFAULT_FILE) -> list[Throughput]:
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"throughput file {path}: no such file (--throughputs FILE)")
    try:
        data = json.loads(path.read_text())
        return [Throughput(**r) for r in data["measurements"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BadInput(
            f"throughput file {path}: not a throughput file ({e}); expected "
            '{"format": 1, "measurements": [{"key", "gpu", "precision", "images_per_s", '
            '"what", "date", "command", ...}]}'
        ) from e


def lookup(records: list[Throughput], key: str, gpu: str, precision: str) -> Throughput | None:
    """The record a plan uses for ``key`` on ``gpu`` in ``precision`` (None: not measured)."""
    same = [r for r in records if (r.key, r.gpu, r.precision) == (key, gpu, precision)]
    if not same:
        return None
    newest_first = sorted(same, key=lambda r: r.date, reverse=True)
    return min(newest_first, key=lambda r: PREFERENCE.index(r.what))


def record(new: list[Throughput], path: str | Path = DEFAULT_FILE) -> Path:
    """Add ``new`` to the file, each replacing the record of the same key, GPU kind,
    precision and ``what``."""
    path = Path(path)
    old = load(path) if path.is_file() else []
    ident = {(r.key, r.gpu, r.precision, r.what) for r in new}
    kept = [r for r in old if (r.key, r.gpu, r.precision, r.what) not in ident]
    rows = sorted(kept + list(new), key=lambda r: (r.key, r.gpu, r.precision, r.what))
    atomic_write_json(path, {"format": FORMAT, "measurements": [asdict(r) for r in rows]})
    return path


def today() -> str:
    return datetime.date.today().isoformat()


def add_record_arg(p) -> None:
    """``--record [FILE]`` of a speed benchmark: add its figures to the throughput file."""
    p.add_argument(
        "--record",
        type=Path,
        nargs="?",
        const=DEFAULT_FILE,
        default=None,
        metavar="FILE",
        help="add the figures to the throughput file care-bench plans with (default file: "
        "bench/throughputs.json), replacing this GPU kind's earlier ones",
    )


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else "CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def record_benchmark(path: Path, figures: list[tuple[str, str, float, str]], device: str,
                     script: str, argv: list[str]) -> Path:  # fmt: skip
    """Record ``figures`` [(key, precision, images/s, what)] measured on ``device`` (a
    device name, e.g. torch.cuda.get_device_name) by ``script`` run with ``argv``."""
    import os

    import torch

    command = " ".join(["python", script, *argv])
    machine = f"{device if gpu_kind(device) != 'cpu' else cpu_model()}, {os.cpu_count()} cores, "
    machine += f"torch {torch.__version__}"
    rows = [Throughput(key, gpu_kind(device), precision, round(float(v), 2), what, today(),
                       command, machine) for key, precision, v, what in figures]  # fmt: skip
    path = record(rows, path)
    print(f"recorded {len(rows)} figure(s) in {path}")
    return path
