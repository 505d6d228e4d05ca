"""The three commands of ``care-bench``: plan, run, status."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

from bench import report, views
from bench.execute import free_gpus, run_calls, run_workers, runner_calls
from bench.plan import RANDOM_INIT, PlanRow, build_plan, weights_stem
from bench.suites import Suite, load_suite
from bench.throughputs import DEFAULT_FILE, Throughput, gpu_kind, load
from common.cli import EXIT_INTERRUPTED, EXIT_OK, ConfigError, InputNotFound


def default_gpu(records: list[Throughput]) -> str:
    """The visible GPU's kind, else the kind with the most measured records."""
    import torch

    if torch.cuda.is_available():
        return gpu_kind(torch.cuda.get_device_name(0))
    counts = Counter(r.gpu for r in records if r.measured and r.gpu != "cpu")
    return counts.most_common(1)[0][0] if counts else "cpu"


def _header(suite: Suite, weights: list[str], output: Path, smoke: bool) -> str:
    """The suite, its tables and the run's data, wrapped at 80 columns."""
    data = "synthetic data (smoke configs)" if smoke else "real data"
    lines = [f"suite {suite.name}: {suite.title}",
             f"tables: {', '.join(suite.tables)}; {len(weights)} checkpoint(s); {data}; "
             f"output {output}"]  # fmt: skip
    return "\n".join(textwrap.fill(line, views.WIDTH, subsequent_indent="  ") for line in lines)


def plan(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    records = load(args.throughputs or DEFAULT_FILE)
    gpu = args.gpu or default_gpu(records)
    precision = "amp" if args.amp else "fp32"
    smoke = args.dataset == "synthetic"
    rows = build_plan(suite, args.weights, args.output, records, gpu, precision, smoke)
    if args.json:
        print(json.dumps(views.plan_json(rows, gpu, precision, args.gpus, args.nodes), indent=1))
        return EXIT_OK
    print(_header(suite, args.weights, args.output, smoke) + "\n")
    print(views.plan_text(rows, gpu, precision, args.gpus, args.nodes))
    return EXIT_OK


def _check_weights(weights: list[str]) -> None:
    for w in weights:
        if w.lower() not in RANDOM_INIT and not Path(w).is_file():
            raise InputNotFound(f"--weights {w}: no such file (or 'none' for random init)")


def _suite_ref(name: str) -> str:
    """A shipped suite's name, or a suite file's absolute path (recorded for status)."""
    return str(Path(name).resolve()) if name.endswith((".yaml", ".yml")) else name


class Reporter:
    """Rebuilds the report when the number of finished seeds changed; one progress line.
    ``watching()``: the same every few seconds in a thread, while a runner call (many
    seeds, minutes to days) runs in the foreground."""

    def __init__(self, output: Path, stems: list[str], rows_fn) -> None:
        self.output, self.stems, self.rows_fn = output, stems, rows_fn
        self.seen = -1
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            n = report.finished_seeds(self.output)
            if n == self.seen:
                return
            self.seen = n
            path = report.rebuild(self.output, self.stems)
            counts = Counter(p.state for r in self.rows_fn() for p in r.progress)
            summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            print(f"[care-bench] {summary}" + (f"; report {path}" if path else ""), flush=True)

    @contextlib.contextmanager
    def watching(self, every: float = 10.0):
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                self.tick()

        thread = threading.Thread(target=loop, name="care-bench-report", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


def _worker_argv(args: argparse.Namespace, suite_ref: str) -> list[str]:
    argv = ["--suite", suite_ref, "--weights", *args.weights, "--output", str(args.output),
            "--dataset", args.dataset, "--launcher", args.launcher,
            "--keep-checkpoints", args.keep_checkpoints, "--logger", args.logger]  # fmt: skip
    for flag, value in (("--imagenet", args.imagenet), ("--recognition-data",
                        args.recognition_data), ("--num-gpus", args.num_gpus)):  # fmt: skip
        if value is not None:
            argv += [flag, str(value)]
    return (
        argv + (["--amp"] if args.amp else []) + (["--allow-pickle"] if args.allow_pickle else [])
    )


def run(args: argparse.Namespace) -> int:
    from transfer.runner import resolve_weights

    suite = load_suite(args.suite)
    smoke = args.dataset == "synthetic"
    _check_weights(args.weights)

    def rows() -> list[PlanRow]:
        return build_plan(suite, args.weights, args.output, [], "none", smoke=smoke)

    if args.worker:  # one of several workers: the seeds only
        return run_calls(runner_calls(rows(), args), lambda: None)
    report.record_run(args.output, _suite_ref(args.suite), args.weights, args.dataset)
    for w in args.weights:  # each checkpoint converted once, before any runner
        if w.lower() not in RANDOM_INIT:
            resolve_weights(w, args.output, args.allow_pickle)
    stems = [weights_stem(w, "detection") for w in args.weights]
    reporter = Reporter(args.output, stems, rows)
    print(_header(suite, args.weights, args.output, smoke), flush=True)
    gpus = free_gpus() if args.launcher != "slurm" else []
    n = 1 if args.launcher == "slurm" else (args.gpus or max(1, len(gpus)))
    if gpus and n > len(gpus):
        raise ConfigError(f"--gpus {n}: only {len(gpus)} free GPU(s) ({', '.join(gpus)})")
    if n == 1:
        with reporter.watching():
            code = run_calls(runner_calls(rows(), args), reporter.tick)
    else:
        argv = _worker_argv(args, _suite_ref(args.suite))
        if args.num_gpus is None:
            argv += ["--num-gpus", "1" if gpus else "0"]
        code = run_workers(argv, gpus[:n], n, args.output / "bench" / "logs", reporter.tick)
    reporter.tick()  # a run with nothing left still gets its report
    if code == EXIT_INTERRUPTED:
        print("interrupted: finished seeds are kept; re-run the same command to continue",
              file=sys.stderr)  # fmt: skip
    return code


def _status_rows(args: argparse.Namespace) -> list[tuple[str, list[PlanRow]]]:
    if args.suite:
        if not args.weights:
            raise ConfigError("--suite needs --weights (or give only --output)")
        runs = [{"suite": args.suite, "weights": args.weights, "dataset": args.dataset}]
    else:
        runs = report.read_runs(args.output)
        if not runs:
            raise ConfigError(f"no care-bench run recorded under {args.output}; pass --suite "
                              "and --weights, or the --output of a run")  # fmt: skip
    out = []
    for r in runs:
        suite = load_suite(r["suite"])
        smoke = r["dataset"] == "synthetic"
        rows = build_plan(suite, r["weights"], args.output, [], "none", smoke=smoke)
        title = f"suite {suite.name} ({r['dataset']} data), output {args.output}"
        out.append((title, rows))
    return out


def status(args: argparse.Namespace) -> int:
    seen = -1
    while True:
        sets = _status_rows(args)
        if args.json:
            print(json.dumps([{"title": t, **views.status_json(rows)} for t, rows in sets]))
        else:
            if args.watch is not None and sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print("\n\n".join(views.status_text(rows, t) for t, rows in sets), flush=True)
        n = report.finished_seeds(args.output)
        if not args.no_report and n != seen:
            stems = [weights_stem(w, "detection") for _, rows in sets for w in
                     dict.fromkeys(r.weights for r in rows)]  # fmt: skip
            path = report.rebuild(args.output, stems)
            if path and not args.json:
                print(f"report: {path}")
            seen = n
        if args.watch is None:
            return EXIT_OK
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return EXIT_OK
