"""``care-bench run``: every remaining seed of a suite through the protocols' own runners.

Each (checkpoint, protocol) is one call of its ``transfer/run_*.py`` runner (its ``cli``, in
this process), which skips finished seeds, resumes partial ones and retries failed ones,
each seed in a child process of its own (``--launcher local``), in this process
(``inprocess``) or as a Slurm job (``slurm``). Every checkpoint is converted once first.
With several GPUs, one worker process per GPU (``CUDA_VISIBLE_DEVICES``) walks the same
list: the runners' seed locks hand each seed to one of them, and two ``care-bench run`` on
one output share the work the same way. A failed seed is reported and the rest go on;
re-running continues where it stopped. The tables and report.html are rebuilt whenever a
seed has finished.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.plan import PlanRow
from bench.progress import lock_held
from bench.protocols import runner_for
from common.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK


@dataclass
class Call:
    """One runner invocation: a checkpoint's protocol (all its seeds and datasets)."""

    weights: str
    rows: list[PlanRow]  # the plan rows it covers (one per dataset)
    module: str
    argv: list[str]

    @property
    def label(self) -> str:
        r = self.rows[0]
        return f"{r.stem} {r.protocol}"

    def left(self) -> list[Path]:
        """Seed folders not finished (read from disk now)."""
        return [d for r in self.rows for d in r.seed_dirs if not (d / "metrics.json").exists()]

    def runnable(self) -> bool:
        """Seeds left that no other launcher holds."""
        return any(not lock_held(d) for d in self.left())


def runner_calls(rows: list[PlanRow], args) -> list[Call]:
    """The runner invocations of ``rows``, in the plan's order (checkpoint, then protocol)."""
    calls: dict[tuple[str, str], Call] = {}
    for r in rows:
        key = (r.weights, r.protocol)
        if key in calls:
            calls[key].rows.append(r)
            continue
        runner = runner_for(r.protocol)
        argv = [*runner.args, "--weights", r.weights, "--seeds", str(r.entry.seeds),
                "--dataset", "synthetic" if r.smoke else "real", "--output", str(args.output),
                "--launcher", args.launcher, "--keep-checkpoints", args.keep_checkpoints,
                "--logger", args.logger]  # fmt: skip
        if runner.family == "recognition":
            argv += ["--datasets", *r.entry.datasets]
            if args.recognition_data:
                argv += ["--data", str(args.recognition_data)]
        if runner.family == "classification" and args.imagenet:
            argv += ["--data", str(args.imagenet)]
        if args.amp:
            argv.append("--amp")
        if args.num_gpus is not None:
            argv += ["--num-gpus", str(args.num_gpus)]
        if args.launcher == "slurm":
            argv += slurm_argv(args)
        argv += r.entry.overrides(r.smoke)
        calls[key] = Call(r.weights, [r], runner.module, argv)
    return list(calls.values())


def slurm_argv(args) -> list[str]:
    out = ["--slurm-time", str(args.slurm_time)]
    if args.slurm_partition:
        out += ["--slurm-partition", args.slurm_partition]
    if args.slurm_cluster:
        out += ["--slurm-cluster", args.slurm_cluster]
    return out


def run_call(call: Call) -> int:
    """The runner's exit code (a user error in it: 2, and the rest go on)."""
    module = importlib.import_module(f"transfer.{call.module}")
    print(f"\n=== {call.label}: python transfer/{call.module}.py {' '.join(call.argv)}",
          flush=True)  # fmt: skip
    return module.cli(list(call.argv))


def run_calls(calls: list[Call], on_progress) -> int:
    """Every call with seeds left, again while a pass started something (a seed another
    launcher held may have been left to us); EXIT_INTERRUPTED at once when a runner was
    interrupted. ``on_progress()`` after each call."""
    failed: dict[str, int] = {}
    while True:
        todo = [c for c in calls if c.label not in failed and c.left() and c.runnable()]
        progressed = False
        for call in todo:
            before = len(call.left())
            code = run_call(call)
            on_progress()
            if code == EXIT_INTERRUPTED:
                return EXIT_INTERRUPTED
            if code != EXIT_OK:
                failed[call.label] = code  # not retried in this run (a re-run retries)
            progressed |= len(call.left()) < before
        if not progressed:
            break
    for call in calls:
        if call.label in failed:
            print(f"FAILED: {call.label} (runner exit {failed[call.label]})", file=sys.stderr)
            for d in call.left():
                if (d / "failed.json").exists():
                    error = json.loads((d / "failed.json").read_text()).get("error", "")
                    print(f"  {d}: {error.strip().splitlines()[-1] if error.strip() else ''}",
                          file=sys.stderr)  # fmt: skip
    held = [d for c in calls for d in c.left() if lock_held(d)]
    for d in held:
        print(f"running in another launcher: {d}")
    return EXIT_FAILED if failed else EXIT_OK


def worker_env(index: int, gpus: list[str]) -> dict:
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index]
    return env


def run_workers(argv: list[str], gpus: list[str], n: int, log_dir: Path, on_tick) -> int:
    """``n`` worker processes of ``care-bench run`` (one per GPU of ``gpus`` when given),
    each logging to ``log_dir/worker<i>.log``; ``on_tick()`` every few seconds while they
    run. SIGINT / SIGTERM are passed on to every worker (their seeds checkpoint)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        log = open(log_dir / f"worker{i}.log", "a")
        cmd = [sys.executable, "-m", "bench", "run", *argv, "--worker"]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                       env=worker_env(i, gpus)), log))  # fmt: skip
        print(f"worker {i}: {'GPU ' + gpus[i] if gpus else 'CPU'}, log {log.name}", flush=True)

    def forward(signum, _frame):
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.poll() is None for p, _ in procs):
            time.sleep(2)
            on_tick()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for _, log in procs:
            log.close()
    codes = [p.returncode for p, _ in procs]
    if EXIT_INTERRUPTED in codes or -signal.SIGINT in codes:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(codes) else EXIT_OK


def free_gpus() -> list[str]:
    """Indices of the visible GPUs no process uses (nvidia-smi's memory.used below 1 GiB),
    in CUDA_VISIBLE_DEVICES's terms; [] without GPUs."""
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return [str(i) for i in range(n)]
    return parse_free(out, os.environ.get("CUDA_VISIBLE_DEVICES"), n)


def parse_free(smi: str, visible: str | None, n: int) -> list[str]:
    """nvidia-smi's ``index, memory.used (MiB)`` lines -> the free ones among the visible
    devices (as CUDA_VISIBLE_DEVICES names them)."""
    used = {}
    for line in smi.strip().splitlines():
        idx, mib = (x.strip() for x in line.split(","))
        used[idx] = float(mib)
    names = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(n)]
    return [name for name in names[:n] if used.get(name, 0.0) < 1024]
