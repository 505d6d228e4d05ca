"""Every finished seed under one or more results roots as one tidy pandas DataFrame.

    >>> from tables import load_runs
    >>> df = load_runs("output")
    >>> df[df.metric == "bbox/AP"].groupby(["protocol", "weights"]).value.agg(["mean", "std"])

One row per (protocol, weights, task, seed, metric): ``metric`` is the slash-joined path of
a numeric scalar in the seed's ``metrics.json`` (``bbox/AP50``, ``segm/AP``, ``cls/top1``,
``headline/cifar10``, ``episodes/eurosat_5shot/ci95``, ``test``, ``wall_time_s``; lists,
strings and the weights record are left out) and ``value`` its float. The other columns
name the seed: ``protocol`` (as its folder, ``_smoke`` included), ``base_protocol``,
``family``, ``synthetic``, ``weights`` (the folder stem), ``method`` and ``epochs`` (from
the checkpoint's metadata), ``arch``, ``weights_sha256``, ``task`` (the downstream dataset
of a recognition protocol, else ""), ``seed`` (the seed value), ``seed_index``,
``seed_dir``; with ``config=True`` every field of the seed's ``config.yaml`` follows as a
``config.<dotted key>`` column (missing where a protocol has no such field). Unlike
``python -m tables``, seeds whose configs differ are not refused: they are rows.
"""

from __future__ import annotations

from pathlib import Path

from tables.aggregate import TablesError, _flatten, _read_config, _read_json, _seed_folders

IDENTITY = ("protocol", "base_protocol", "family", "synthetic", "weights", "method", "epochs",
            "arch", "weights_sha256", "task", "seed", "seed_index", "seed_dir")  # fmt: skip
_SKIP = {"seed", "seed_index", "sessions", "weights", "protocol", "base_protocol", "family"}


def _metric_items(m: dict, prefix: str = ""):
    """(slash key, float) of every numeric scalar leaf of a metrics dict."""
    for k, v in m.items():
        if not prefix and k in _SKIP:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _metric_items(v, key + "/")
        elif isinstance(v, bool):
            continue
        elif isinstance(v, (int, float)):
            yield key, float(v)


def _family(protocol: str, m: dict) -> str:
    if "family" in m:
        return m["family"]
    return "detection" if "bbox" in m else "classification" if "cls" in m else ""


def load_runs(*roots: str | Path, config: bool = True):
    """The tidy DataFrame of every finished seed (``metrics.json`` present) under ``roots``
    (default: ``output``); columns as in the module docstring, ``value`` float64."""
    import pandas as pd

    roots = roots or ("output",)
    records = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise TablesError(f"results root {root} does not exist")
        for protocol, weights, task, seed_dir in _seed_folders(root):
            if not (seed_dir / "metrics.json").is_file():
                continue
            m = _read_json(seed_dir / "metrics.json")
            info = m.get("weights") or {}
            meta = info.get("meta") or {}
            ident = {
                "protocol": protocol,
                "base_protocol": m.get("base_protocol", protocol.removesuffix("_smoke")),
                "family": _family(protocol, m),
                "synthetic": m.get("dataset") == "synthetic",
                "weights": weights,
                "method": meta.get("method") or "",
                "epochs": meta.get("epochs"),
                "arch": m.get("arch") or meta.get("arch") or "",
                "weights_sha256": info.get("sha256") or "",
                "task": task,
                "seed": m.get("seed"),
                "seed_index": m.get("seed_index"),
                "seed_dir": str(seed_dir),
            }
            cfg = {f"config.{k}": v for k, v in _flatten(_read_config(seed_dir)).items()}
            for key, value in _metric_items(m):  # NaN kept: COCOeval's NaN per-class AP
                records.append({**ident, "metric": key, "value": value,
                                **(cfg if config else {})})  # fmt: skip
    columns = [*IDENTITY, "metric", "value"]
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return pd.DataFrame(columns=columns).astype({"value": "float64"})
    df = df.astype({"value": "float64", "synthetic": "bool"})
    df["seed"] = df["seed"].astype("Int64")
    df["seed_index"] = df["seed_index"].astype("Int64")
    df["epochs"] = pd.to_numeric(df["epochs"], errors="coerce").astype("Int64")
    rest = sorted(c for c in df.columns if c not in columns)
    return df[columns + rest]
