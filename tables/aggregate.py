"""Collect per-seed ``metrics.json`` files and aggregate them over seeds.

A group is (protocol, weights stem). Per metric: mean, sample std (ddof = 1), n and the 95%
confidence interval half-width of the mean, ``t_{0.975, n-1} * std / sqrt(n)`` (Student t).
Seeds are merged only when their ``config.yaml`` agree in everything but the seed and the
output folder (and the weights file's path: its content hash is compared instead).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.cli import UserError

MIN_SEEDS = 5  # the protocol's number of trials; fewer is marked
IGNORED_CONFIG_KEYS = {"SEED", "OUTPUT_DIR", "MODEL.WEIGHTS", "seed"}


class TablesError(UserError, ValueError):
    """Bad or inconsistent results; the message names the file or key."""


@dataclass
class Stat:
    """Aggregate of one metric over seeds."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof = 1); NaN for a single seed."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def ci95(self) -> float:
        """Half-width of the 95% confidence interval of the mean (Student t)."""
        if self.n < 2:
            return math.nan
        from scipy.stats import t

        return float(t.ppf(0.975, self.n - 1)) * self.std / math.sqrt(self.n)


@dataclass
class IntervalStat(Stat):
    """A few-shot cell: ``values`` the seeds' mean episode accuracies, ``interval`` the 95%
    half-width ssl-transfer prints, ``1.96 * std / sqrt(episodes)``, here with the std of all
    the seeds' episodes pooled (a paper row: the interval it reports)."""

    interval: float = math.nan

    @property
    def ci95(self) -> float:
        return self.interval

    @classmethod
    def pooled(cls, seeds: list[dict]) -> IntervalStat:
        """From per-seed ``{"mean", "std", "episodes"}`` (population std per seed)."""
        n = sum(s["episodes"] for s in seeds)
        grand = sum(s["mean"] * s["episodes"] for s in seeds) / n
        var = sum(s["episodes"] * (s["std"] ** 2 + (s["mean"] - grand) ** 2) for s in seeds) / n
        return cls([float(s["mean"]) for s in seeds], 1.96 * math.sqrt(var) / math.sqrt(n))


@dataclass
class SeedResult:
    path: Path  # the seed folder
    metrics: dict
    config: dict  # flattened config.yaml


@dataclass
class Group:
    """All finished seeds of one (protocol, weights) pair, plus what did not finish."""

    protocol: str
    weights: str
    task: str = ""  # recognition: the downstream dataset (<protocol>/<weights>/<task>/seed<k>)
    seeds: list[SeedResult] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def base_protocol(self) -> str:
        return self.seeds[0].metrics.get("base_protocol", self.protocol.removesuffix("_smoke"))

    @property
    def synthetic(self) -> bool:
        return self.seeds[0].metrics.get("dataset") == "synthetic"

    @property
    def meta(self) -> dict:
        return self.seeds[0].metrics.get("weights", {}).get("meta", {}) or {}

    @property
    def few_seeds(self) -> bool:
        return len(self.seeds) < MIN_SEEDS

    def episode_stat(self, key: str) -> IntervalStat | None:
        """The few-shot cell ``key`` (e.g. ``eurosat_5shot``) over the seeds' episodes."""
        seeds = [s.metrics["episodes"][key] for s in self.seeds
                 if key in s.metrics.get("episodes", {})]  # fmt: skip
        return IntervalStat.pooled(seeds) if seeds else None

    def stat(self, task: str, metric: str) -> Stat | None:
        vals = [
            s.metrics[task][metric]
            for s in self.seeds
            if task in s.metrics and metric in s.metrics[task]
        ]
        vals = [float(v) for v in vals if v is not None and not math.isnan(float(v))]
        return Stat(vals) if vals else None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TablesError(f"malformed JSON in {path}: {e}") from e


def _read_config(seed_dir: Path) -> dict:
    path = seed_dir / "config.yaml"
    if not path.exists():
        return {}
    try:
        return _flatten(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as e:
        raise TablesError(f"malformed YAML in {path}: {e}") from e


def check_same_config(group: Group) -> None:
    """Raise TablesError naming the first key (other than the seed) where seeds differ."""
    ref = group.seeds[0]
    ref_sha = ref.metrics.get("weights", {}).get("sha256")
    for s in group.seeds[1:]:
        sha = s.metrics.get("weights", {}).get("sha256")
        if sha != ref_sha:
            raise TablesError(
                f"refusing to merge seeds of {group.protocol}/{group.weights}: different weights "
                f"files (sha256 {ref_sha} in {ref.path} vs {sha} in {s.path})"
            )
        keys = (set(ref.config) | set(s.config)) - IGNORED_CONFIG_KEYS
        for key in sorted(keys):
            a, b = ref.config.get(key, "<absent>"), s.config.get(key, "<absent>")
            if a != b:
                raise TablesError(
                    f"refusing to merge seeds of {group.protocol}/{group.weights}: config key "
                    f"{key} differs ({a!r} in {ref.path} vs {b!r} in {s.path})"
                )


def _add_seed(group: Group, seed_dir: Path, seen: dict[tuple, Path]) -> None:
    """Record one seed folder in its group: finished, failed or unfinished."""
    if (seed_dir / "metrics.json").exists():
        m = _read_json(seed_dir / "metrics.json")
        missing = [k for k in ("protocol", "seed") if k not in m]
        if not ({"bbox", "cls", "headline", "knn"} & set(m)):
            missing.append("bbox")  # detection; 'cls' classification, 'headline' recognition,
            # 'knn' a pretraining run's kNN monitor
        if missing:
            raise TablesError(
                f"{seed_dir / 'metrics.json'} lacks '{missing[0]}': not a metrics "
                "file written by transfer/run_*.py or python -m pretrain --results"
            )
        key = (group.protocol, group.weights, group.task, m["seed"])
        if key in seen:
            where = "/".join(x for x in (group.protocol, group.weights, group.task) if x)
            raise TablesError(
                f"seed value {m['seed']} of {where} appears twice: {seen[key]} and {seed_dir}"
            )
        seen[key] = seed_dir
        group.seeds.append(SeedResult(seed_dir, m, _read_config(seed_dir)))
    elif (seed_dir / "failed.json").exists():
        err = _read_json(seed_dir / "failed.json").get("error", "unknown error")
        group.failed.append((seed_dir, err))
    else:
        group.unfinished.append(seed_dir)


# Protocols whose results sit one level deeper, per downstream dataset.
PER_DATASET_PROTOCOLS = {"manyshot_linear", "manyshot_finetune", "fewshot", "pretrain_knn"}


def _seed_folders(root: Path):
    """(protocol, weights, task, seed folder) of every seed under ``root``."""
    for seed_dir in sorted(root.glob("*/*/seed*")):
        if seed_dir.is_dir() and seed_dir.name[4:].isdigit():
            yield seed_dir.parent.parent.name, seed_dir.parent.name, "", seed_dir
    for seed_dir in sorted(root.glob("*/*/*/seed*")):
        protocol = seed_dir.parents[2].name
        if protocol.removesuffix("_smoke") not in PER_DATASET_PROTOCOLS:
            continue
        if seed_dir.is_dir() and seed_dir.name[4:].isdigit():
            yield protocol, seed_dir.parents[1].name, seed_dir.parent.name, seed_dir


def add_runs_arg(parser, help: str) -> None:
    """``--runs ROOT [ROOT ...]``: the results roots a command reads (default: output)."""
    parser.add_argument(
        "--runs", nargs="+", type=Path, default=[Path("output")], help=f"{help} (default: output)"
    )


def collect(roots: list[str | Path]) -> list[Group]:
    """Every seed folder ``<root>/<protocol>/<weights>/seed<k>/`` under the roots (and
    ``<protocol>/<weights>/<dataset>/seed<k>/`` of the per-dataset recognition protocols)."""
    groups: dict[tuple[str, str, str], Group] = {}
    seen: dict[tuple, Path] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise TablesError(f"results root {root} does not exist")
        for protocol, weights, task, seed_dir in _seed_folders(root):
            key = (protocol, weights, task)
            group = groups.setdefault(key, Group(protocol, weights, task))
            _add_seed(group, seed_dir, seen)
    if not groups:
        raise TablesError(
            f"no seed folders (<protocol>/<weights>/seed<k>/) under {', '.join(map(str, roots))}; "
            "run transfer/run_voc.py, run_coco.py, run_linear.py or run_recognition.py first"
        )
    for g in groups.values():
        if g.seeds:
            check_same_config(g)
    return sorted(groups.values(), key=lambda g: (g.protocol, g.weights, g.task))


def welch(a: Stat, b: Stat) -> float:
    """Two-sided p-value of Welch's t-test between two sets of seeds (NaN if n < 2)."""
    if a.n < 2 or b.n < 2 or (a.std == 0 and b.std == 0):
        return math.nan  # undefined (zero variance on both sides)
    from scipy.stats import ttest_ind

    return float(ttest_ind(a.values, b.values, equal_var=False).pvalue)
