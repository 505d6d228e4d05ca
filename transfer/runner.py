"""Multi-seed transfer runs: convert the weights once, then fine-tune one seed at a time.

Layout of the results (what ``tables`` reads)::

    <output>/weights/<stem>-<sha12>.pkl (+ .json report)   converted, cached by content hash
    <output>/<protocol>/<weights-stem>/seed<k>/
        config.yaml  log.txt  train_metrics.jsonl  environment.json  sessions.json
        metrics.json                                        written last: the seed is done
        failed.json                                         when the seed failed (NaN, ...)

Seed ``k`` uses the recorded seed value ``SEED_BASE + k``. A finished seed is skipped; an
unfinished one resumes from its last checkpoint. Each seed runs in its own process (local
launcher) or Slurm job (submitit), so a failing seed never takes the others down.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
import traceback

from common.atomic import atomic_write_json
from transfer.config import PROTOCOLS, build_config
from transfer.trainer import INTERRUPTED_EXIT_CODE

SEED_BASE = 1000
RANDOM_INIT = ("none", "random")


def seed_value(k: int) -> int:
    """The fixed seed of seed index ``k`` (recorded in config.yaml and metrics.json)."""
    return SEED_BASE + k


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags shared by run_voc.py and run_coco.py (DESIGN.md s. 3 defaults)."""
    p.add_argument("--weights", required=True,
                   help="pretrained backbone: a pretraining checkpoint (.pth/.pt/.tar, converted "
                        "and cached), a Detectron2 .pkl, or 'none' for random initialisation")
    p.add_argument("--seeds", type=int, default=5,
                   help="number of seeds (protocol: 5 trials); seed k uses seed value "
                        f"{SEED_BASE}+k")
    p.add_argument("--dataset", choices=["real", "synthetic"], default="real",
                   help="real: $DETECTRON2_DATASETS; synthetic: built-in shapes with the "
                        "protocol's smoke config (small images, few iterations, CPU-friendly)")
    p.add_argument("--output", type=Path, default=Path("output"),
                   help="results root (default: %(default)s)")
    p.add_argument("--shapes-root", type=Path, default=None,
                   help="where the synthetic data is written (default: <output>/datasets/shapes)")
    p.add_argument("--num-gpus", type=int, default=None,
                   help="GPUs per machine (default: all visible; 0 = CPU)")
    p.add_argument("--num-machines", type=int, default=1, help="machines (default: 1)")
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
    p.add_argument("--dist-url", default="auto",
                   help="torch.distributed init URL, e.g. tcp://host:port (default: auto, "
                        "single machine)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (off by default: the protocol is fp32; CUDA only)")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: seeds one after another here; slurm: one job per seed "
                        "(needs the 'slurm' extra: pip install submitit)")
    p.add_argument("--slurm-partition", default=None, help="Slurm partition")
    p.add_argument("--slurm-time", type=int, default=24 * 60, help="job time limit, minutes")
    p.add_argument("--slurm-cluster", default=None, choices=[None, "slurm", "local", "debug"],
                   help="submitit cluster (default: auto; 'local' runs the jobs here, for "
                        "testing the Slurm path)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow weights files holding Python objects (trusted files only)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="trailing KEY VALUE config overrides, e.g. SOLVER.MAX_ITER 100")
    return p


def resolve_weights(weights: str, output: Path, allow_pickle: bool = False) -> dict:
    """Convert (or reuse the cached conversion of) ``weights``.

    Returns {"path": pkl or "", "stem", "source", "sha256", "meta"}.
    """
    from transfer.convert import convert_file, file_sha256, summarise

    if weights.lower() in RANDOM_INIT:
        return {"path": "", "stem": "random_init", "source": None, "sha256": None,
                "meta": {"method": "Rand Init"}}
    src = Path(weights)
    if not src.is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file (or pass 'none' for "
                                "random initialisation)")
    sha = file_sha256(src)
    stem = src.stem
    cached = output / "weights" / f"{stem}-{sha[:12]}.pkl"
    report_path = cached.with_suffix(".json")
    if not (cached.exists() and report_path.exists()):
        report = convert_file(src, cached, allow_pickle=allow_pickle)
        atomic_write_json(report_path, report)
        print(summarise(report))
    else:
        report = json.loads(report_path.read_text())
        print(f"weights: reusing {cached} (converted from {src})")
    return {"path": str(cached.resolve()), "stem": stem, "source": str(src.resolve()),
            "sha256": sha, "meta": report.get("meta", {}), "arch": report.get("arch")}


# The detector's ResNet must match the weights: depth / width overrides per converted arch.
ARCH_OPTS = {"ResNet-50": [], "ResNet-101": ["MODEL.RESNETS.DEPTH", "101"],
             "ResNet-152": ["MODEL.RESNETS.DEPTH", "152"],
             "ResNet-50 x2": ["MODEL.RESNETS.WIDTH_PER_GROUP", "128"]}


def arch_opts(arch: str | None) -> list[str]:
    """Config overrides that build the detector's backbone as the weights' ResNet."""
    if arch is None:  # random init or a .pkl without metadata: the protocol's ResNet-50
        return []
    if arch not in ARCH_OPTS:
        raise ValueError(f"the weights are a {arch}; the detection protocols need a bottleneck "
                         f"ResNet ({', '.join(ARCH_OPTS)}): Detectron2's C4 head is a "
                         "bottleneck res5")
    return list(ARCH_OPTS[arch])


def seed_status(seed_dir: Path) -> str:
    if (seed_dir / "metrics.json").exists():
        return "finished"
    if (seed_dir / "failed.json").exists():
        return "failed"
    if (seed_dir / "last_checkpoint").exists():
        return "resumable"
    return "new"


def run_seed_process(spec: dict) -> int:
    """Entry of one seed's process: detectron2 ``launch`` over its GPUs."""
    from detectron2.engine import launch

    from transfer.trainer import TrainingInterrupted, train_seed

    seed_dir = Path(spec["seed_dir"])
    try:
        launch(train_seed, spec["num_gpus"], num_machines=spec["num_machines"],
               machine_rank=spec["machine_rank"], dist_url=spec["dist_url"], args=(spec,))
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        print(f"seed {spec['seed_index']}: {e or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except Exception as e:  # noqa: BLE001 - any failure of a seed is recorded, others go on
        if spec["machine_rank"] == 0:
            atomic_write_json(seed_dir / "failed.json", {
                "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        print(f"seed {spec['seed_index']} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


class SlurmSeedJob:
    """A submitit job for one seed; on preemption / time-out it requeues itself and the
    seed resumes from its last checkpoint."""

    def __call__(self, spec: dict) -> int:
        import submitit

        env = submitit.JobEnvironment()
        spec = dict(spec, machine_rank=env.node)
        if spec["num_machines"] > 1:
            host = os.environ.get("SLURM_LAUNCH_NODE_IPADDR") or env.hostnames[0]
            port = 29500 + int(str(env.job_id).split("_")[0]) % 1000  # same on every node
            spec["dist_url"] = f"tcp://{host}:{port}"
        return run_seed_process(spec)

    def checkpoint(self, spec: dict):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmSeedJob(), spec)


def _run_local(spec: dict) -> int:
    """Run one seed in a child process; SIGTERM to us is forwarded to it."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    cmd = [sys.executable, "-m", "transfer.runner", "--seed-spec", f.name]
    child = subprocess.Popen(cmd)
    previous = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the child got SIGINT too: let it checkpoint
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.unlink(f.name)


def _submit_slurm(specs: list[dict], args: argparse.Namespace, folder: Path) -> list:
    try:
        import submitit
    except ImportError:
        raise SystemExit("--launcher slurm needs submitit: pip install -e '.[slurm]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=args.slurm_cluster)
    gpus = max(args.num_gpus or 0, 0)
    params = {"timeout_min": args.slurm_time, "nodes": args.num_machines,
              "tasks_per_node": 1, "name": folder.parent.name}
    if executor.cluster == "slurm":
        params.update(slurm_partition=args.slurm_partition, gpus_per_node=gpus,
                      cpus_per_task=max(4, 8 * gpus), slurm_signal_delay_s=120)
    executor.update_parameters(**params)
    return [executor.submit(SlurmSeedJob(), spec) for spec in specs]


def run_protocol(args: argparse.Namespace, protocol: str) -> int:
    """Run ``args.seeds`` seeds of ``protocol``; returns the process exit code."""
    import torch

    from transfer.datasets import check_real

    smoke = args.dataset == "synthetic"
    num_gpus = torch.cuda.device_count() if args.num_gpus is None else args.num_gpus
    if args.amp and not torch.cuda.is_available():
        raise SystemExit("--amp needs CUDA (detectron2's AMPTrainer); drop --amp on CPU")
    if num_gpus > torch.cuda.device_count() and args.launcher == "local":
        raise SystemExit(f"--num-gpus {num_gpus} but {torch.cuda.device_count()} GPUs visible")
    device = "cuda" if num_gpus > 0 else "cpu"
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        raise SystemExit(f"config overrides must be KEY VALUE pairs, got {opts}")
    cfg = build_config(protocol, smoke=smoke, opts=opts, device=device)  # validates opts early
    output = args.output.resolve()
    shapes_root = None
    if smoke:
        from synthetic import generate

        shapes_root = str(generate(args.shapes_root or output / "datasets" / "shapes"))
    else:
        check_real(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))

    weights = resolve_weights(args.weights, output, args.allow_pickle)
    opts = arch_opts(weights.get("arch")) + opts  # the user's overrides come last and win
    protocol_name = f"{protocol}_smoke" if smoke else protocol
    run_dir = output / protocol_name / weights["stem"]
    print(f"{PROTOCOLS[protocol]}{' (smoke, synthetic data)' if smoke else ''}: "
          f"{args.seeds} seed(s) of {weights['stem']} -> {run_dir}")
    specs, statuses = [], {}
    for k in range(args.seeds):
        seed_dir = run_dir / f"seed{k}"
        status = seed_status(seed_dir)
        if status == "finished":
            print(f"seed {k}: finished, skipped ({seed_dir / 'metrics.json'})")
            statuses[k] = "finished (earlier)"
            continue
        if status == "failed":
            (seed_dir / "failed.json").unlink()  # a re-run retries a failed seed
        specs.append({
            "protocol": protocol, "protocol_name": protocol_name, "smoke": smoke,
            "dataset": args.dataset, "shapes_root": shapes_root, "weights": weights["path"],
            "weights_info": {k2: weights[k2] for k2 in ("stem", "source", "sha256", "meta")},
            "seed_index": k, "seed": seed_value(k), "seed_dir": str(seed_dir), "opts": opts,
            "num_gpus": num_gpus, "num_machines": args.num_machines,
            "machine_rank": args.machine_rank, "dist_url": args.dist_url, "amp": args.amp,
            "device": device,
        })

    if args.launcher == "slurm":
        jobs = _submit_slurm(specs, args, run_dir / "slurm")
        for spec, job in zip(specs, jobs):
            print(f"seed {spec['seed_index']}: submitted Slurm job {job.job_id}")
        if args.slurm_cluster in ("local", "debug"):
            for spec, job in zip(specs, jobs):
                statuses[spec["seed_index"]] = "finished" if job.result() == 0 else "failed"
        else:
            print("re-run the same command after the jobs end to see the summary")
            return 0
    else:
        for spec in specs:
            k = spec["seed_index"]
            resumable = seed_status(Path(spec["seed_dir"])) == "resumable"
            print(f"seed {k} (seed value {spec['seed']}): "
                  f"{'resuming' if resumable else 'starting'}")
            code = _run_local(spec)
            if code == INTERRUPTED_EXIT_CODE or code == -signal.SIGINT:
                print(f"interrupted during seed {k}: its checkpoint is kept; re-run the same "
                      "command to resume", file=sys.stderr)
                return INTERRUPTED_EXIT_CODE
            statuses[k] = "finished" if code == 0 else "failed"
    return summarise_run(run_dir, statuses)


def summarise_run(run_dir: Path, statuses: dict[int, str]) -> int:
    """Print one line per seed with its headline AP; non-zero if any seed failed."""
    failed = [k for k, s in statuses.items() if s == "failed"]
    for k in sorted(statuses):
        seed_dir = run_dir / f"seed{k}"
        if (seed_dir / "metrics.json").exists():
            m = json.loads((seed_dir / "metrics.json").read_text())
            aps = "  ".join(f"{task} AP {m[task]['AP']:.2f} AP50 {m[task]['AP50']:.2f}"
                            for task in ("bbox", "segm") if task in m)
            print(f"seed {k}: {statuses[k]:<18} {aps}  ({m['wall_time_s']:.0f} s)")
        else:
            err = ""
            if (seed_dir / "failed.json").exists():
                err = json.loads((seed_dir / "failed.json").read_text())["error"]
            print(f"seed {k}: {statuses[k]:<18} {err}")
    if failed:
        print(f"FAILED seeds: {failed} (details in seed<k>/failed.json; a re-run retries them)",
              file=sys.stderr)
        return 1
    return 0


def cli_main(main, parser: argparse.ArgumentParser) -> int:
    """Run a runner script's ``main``; bad input ends with one clear line, no traceback."""
    try:
        return main(parser.parse_args())
    except (FileNotFoundError, ValueError) as e:  # ConversionError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


def _seed_spec_main() -> None:
    """``python -m transfer.runner --seed-spec FILE``: the child process of one seed."""
    p = argparse.ArgumentParser()
    p.add_argument("--seed-spec", required=True)
    spec = json.loads(Path(p.parse_args().seed_spec).read_text())
    sys.exit(run_seed_process(spec))


if __name__ == "__main__":
    _seed_spec_main()
