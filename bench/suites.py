"""Suites: a paper's evaluation as data (``bench/suites/<name>.yaml``, or any YAML file).

A suite names the tables it fills; each table's protocols, their seed counts (the table's
``min_seeds``) and, for per-dataset protocols, the datasets come from ``tables.layout.TABLES``,
so a suite and its tables never disagree. A table entry may narrow or override that::

    name: quick
    title: each family's short sanity run
    tables:
      - table4                          # every protocol of the table, its seed count
      - table: manyshot
        protocols: [manyshot_linear]    # a subset of the table's protocols
        datasets: [dtd, pets]           # a subset of its datasets
        seeds: 1
        opts: [SOLVER.MAX_ITER, 2000]   # KEY VALUE overrides of real-data runs
        smoke_opts: [SOLVER.MAX_ITER, 6]   # ... of --dataset synthetic runs

Protocols shared by two tables (manyshot_linear fills ``manyshot`` and ``manyshot_C``) are
run once: their datasets are merged, their seeds are the larger count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.protocols import DATASET_IMAGES, runner_for
from common.cli import BadInput, ConfigError, InputNotFound
from tables.layout import TABLES

SUITES_DIR = Path(__file__).resolve().parent / "suites"
ENTRY_KEYS = {"table", "protocols", "datasets", "seeds", "opts", "smoke_opts"}


@dataclass
class Entry:
    """One protocol of a suite: its seeds, datasets (recognition) and overrides."""

    protocol: str
    seeds: int
    tables: list[str]
    datasets: list[str] = field(default_factory=list)  # empty: the protocol has none
    opts: list[str] = field(default_factory=list)
    smoke_opts: list[str] = field(default_factory=list)

    def overrides(self, smoke: bool) -> list[str]:
        return list(self.smoke_opts if smoke else self.opts)


@dataclass
class Suite:
    name: str
    title: str
    tables: list[str]
    entries: list[Entry]
    path: Path


def known_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(name_or_path: str) -> Path:
    """A shipped suite's file by name, or a user's suite file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputNotFound(f"suite file {path}: no such file")
        return path
    shipped = SUITES_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(
            f"--suite {name_or_path}: no such suite; shipped: {', '.join(known_suites())}, "
            "or give the path of your own .yaml"
        )
    return shipped


def _pairs(value, where: str) -> list[str]:
    items = [str(v) for v in (value or [])]
    if len(items) % 2:
        raise BadInput(f"{where}: overrides must be KEY VALUE pairs, got {items}")
    return items


def table_datasets(table: str, protocol: str) -> list[str]:
    """The datasets of ``protocol``'s columns in ``table`` (its column order), or []."""
    out: list[str] = []
    for c in TABLES[table].columns:
        d = c.dataset or c.metric
        if c.protocol == protocol and d in DATASET_IMAGES and d not in out:
            out.append(d)
    return out


def _table_entries(item, where: str) -> list[Entry]:
    spec = item if isinstance(item, dict) else {"table": item}
    unknown = set(spec) - ENTRY_KEYS
    if unknown:
        raise BadInput(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(ENTRY_KEYS)}")
    table = spec.get("table")
    if table not in TABLES:
        raise BadInput(f"{where}: table {table!r} is not one of {', '.join(TABLES)}")
    ordered = list(dict.fromkeys(c.protocol for c in TABLES[table].columns))
    protocols = spec.get("protocols") or ordered
    for p in protocols:
        if p not in ordered:
            raise BadInput(f"{where}: {table} has no protocol {p!r}; its protocols: {ordered}")
        runner_for(p)  # a protocol no runner runs (pretraining) is refused here
    entries = []
    for p in protocols:
        datasets = table_datasets(table, p)
        if spec.get("datasets"):
            extra = [d for d in spec["datasets"] if d not in datasets]
            if extra:
                raise BadInput(f"{where}: {table} / {p} has no datasets {extra}; its: {datasets}")
            datasets = list(spec["datasets"])
        seeds = int(spec.get("seeds") or TABLES[table].min_seeds)
        opts = _pairs(spec.get("opts"), where)
        smoke_opts = _pairs(spec.get("smoke_opts"), where)
        entries.append(Entry(p, seeds, [table], datasets, opts, smoke_opts))
    return entries


def _merge(entries: list[Entry], where: str) -> list[Entry]:
    merged: dict[str, Entry] = {}
    for e in entries:
        if e.protocol not in merged:
            merged[e.protocol] = e
            continue
        m = merged[e.protocol]
        if (m.opts, m.smoke_opts) != (e.opts, e.smoke_opts):
            raise BadInput(f"{where}: {e.protocol} appears in {m.tables} and {e.tables} with "
                           "different overrides; give them once")  # fmt: skip
        m.seeds = max(m.seeds, e.seeds)
        m.tables += e.tables
        m.datasets += [d for d in e.datasets if d not in m.datasets]
    return list(merged.values())


def load_suite(name_or_path: str) -> Suite:
    path = suite_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BadInput(f"suite file {path}: not valid YAML ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
        raise BadInput(f"suite file {path}: expected a mapping with a 'tables' list")
    entries: list[Entry] = []
    tables: list[str] = []
    for i, item in enumerate(data["tables"]):
        found = _table_entries(item, f"{path} tables[{i}]")
        entries += found
        tables = list(dict.fromkeys(tables + [t for e in found for t in e.tables]))
    return Suite(str(data.get("name") or path.stem), str(data.get("title") or ""), tables,
                 _merge(entries, str(path)), path)  # fmt: skip
