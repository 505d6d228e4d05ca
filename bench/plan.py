"""A suite's plan for some checkpoints: one row per checkpoint x protocol x dataset, the state
of its seed folders, and the GPU-hours of what is left from measured throughputs.

The seed folders are the runners' own (``transfer/runner.py``):
``<output>/<protocol>[_smoke]/<weights stem>/[<dataset>/]seed<k>``. A partial seed costs
the part of its iterations still to run. A phase whose throughput is not measured for the
GPU kind and precision makes its row "not measured"; an estimate record is counted apart
and labelled as one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path

from bench.progress import SeedProgress, seed_progress
from bench.protocols import Phase, runner_for, seed_work
from bench.suites import Entry, Suite
from bench.throughputs import Throughput, lookup

RANDOM_INIT = ("none", "random")


def weights_stem(weights: str, family: str) -> str:
    """The results folder's name for ``weights`` (what the family's runner uses): the file's
    stem, or the random initialisation's name (classification and recognition name the
    ResNet, the suite runs their default ResNet-50)."""
    if weights.lower() in RANDOM_INIT:
        return "random_init_r50" if family in ("classification", "recognition") else "random_init"
    return Path(weights).stem


@dataclass
class PlanRow:
    weights: str  # as given
    stem: str
    entry: Entry
    dataset: str | None
    smoke: bool
    seed_dirs: list[Path]
    progress: list[SeedProgress]
    phases: list[Phase]
    rates: list[Throughput | None] = field(default_factory=list)
    hours: float | None = None  # GPU-hours left; None: a phase is not measured
    seed_hours: list[float] = field(default_factory=list)  # per unfinished seed
    estimated: bool = False  # an estimate record was used

    @property
    def protocol(self) -> str:
        return self.entry.protocol

    @property
    def finished(self) -> int:
        return sum(p.state == "finished" for p in self.progress)

    def state(self) -> str:
        """finished / to run / partial (iteration k of n) / running / failed, in a few words."""
        n = len(self.progress)
        states = [p.state for p in self.progress]
        if self.finished == n:
            return "finished"
        parts = []
        for word in ("running", "failed"):
            if word in states:
                parts.append(f"{states.count(word)} {word}")
        for i, p in enumerate(self.progress):
            if p.state == "partial":
                at = f"it {p.iteration} of {p.total}" if p.total else "resumable"
                parts.append(f"seed {i} at {at}")
        if not parts:
            return "to run"
        return ", ".join(parts)

    def source(self) -> str:
        if any(r is None for r in self.rates):
            return "not measured"
        return "; ".join(dict.fromkeys(r.source() for r in self.rates if r is not None))

    @property
    def work(self) -> str:
        return " + ".join(ph.work for ph in self.phases)


def _left(progress: SeedProgress) -> float:
    """The fraction of a seed's work still to do."""
    if progress.state == "finished":
        return 0.0
    if progress.iteration is not None and progress.total:
        return max(0.0, 1.0 - progress.iteration / progress.total)
    return 1.0


def _cost(row: PlanRow, records: list[Throughput], gpu: str, precision: str) -> None:
    row.rates = [lookup(records, ph.rate_key, gpu, precision) for ph in row.phases]
    row.estimated = any(r is not None and not r.measured for r in row.rates)
    if any(r is None for r in row.rates) or any(ph.images is None for ph in row.phases):
        row.rates = [r if ph.images is not None else None for r, ph in zip(row.rates, row.phases)]
        row.hours = None
        return
    per_seed = sum(ph.images / r.images_per_s for ph, r in zip(row.phases, row.rates)) / 3600
    row.seed_hours = [per_seed * _left(p) for p in row.progress if p.state != "finished"]
    row.hours = sum(row.seed_hours)


def seed_dirs(output: Path, entry: Entry, stem: str, dataset: str | None, smoke: bool):
    name = entry.protocol + ("_smoke" if smoke else "")
    run_dir = output / name / stem / (dataset or "")
    return [run_dir / f"seed{k}" for k in range(entry.seeds)]


def build_plan(
    suite: Suite,
    weights: list[str],
    output: Path,
    records: list[Throughput],
    gpu: str,
    precision: str = "fp32",
    smoke: bool = False,
) -> list[PlanRow]:
    """Every (checkpoint, protocol, dataset) of ``suite`` for ``weights`` under ``output``."""
    rows = []
    for w in weights:
        for entry in suite.entries:
            stem = weights_stem(w, runner_for(entry.protocol).family)
            for dataset in entry.datasets or [None]:
                dirs = seed_dirs(output, entry, stem, dataset, smoke)
                phases = seed_work(entry.protocol, dataset, entry.overrides(smoke), smoke)
                row = PlanRow(w, stem, entry, dataset, smoke, dirs,
                              [seed_progress(d) for d in dirs], phases)  # fmt: skip
                _cost(row, records, gpu, precision)
                rows.append(row)
    return rows


@dataclass
class Totals:
    hours: float = 0.0  # measured throughputs
    estimated_hours: float = 0.0  # rows using an estimate record
    not_measured: int = 0  # rows with work left whose cost is unknown
    seeds_left: int = 0
    seeds: int = 0


def totals(rows: list[PlanRow]) -> Totals:
    t = Totals()
    for r in rows:
        left = len(r.progress) - r.finished
        t.seeds += len(r.progress)
        t.seeds_left += left
        if r.hours is None:
            t.not_measured += left > 0
        elif r.estimated:
            t.estimated_hours += r.hours
        else:
            t.hours += r.hours
    return t


def wall_hours(rows: list[PlanRow], gpus: int, nodes: int = 1) -> float:
    """The wall time of the costed seeds left on ``gpus`` x ``nodes`` GPUs, one seed per GPU
    at a time, longest first (the order ``care-bench run`` hands seeds out does not change
    it by more than the longest seed)."""
    loads = [0.0] * max(1, gpus * nodes)
    for h in sorted((h for r in rows if r.hours is not None for h in r.seed_hours), reverse=True):
        heapq.heapreplace(loads, loads[0] + h)
    return max(loads)
