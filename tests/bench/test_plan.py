"""care-bench without running anything: suites from the tables' layout, the plan's GPU-hours
by hand, the throughput file, the status of seed folders in every state, the comparison."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import yaml

from bench import views
from bench.execute import parse_free
from bench.plan import build_plan, totals, wall_hours
from bench.progress import seed_progress
from bench.suites import known_suites, load_suite
from bench.throughputs import Throughput, gpu_kind, load, lookup, record
from common.cli import BadInput, ConfigError
from tables.aggregate import Stat
from tables.compare import diff_ci95
from tables.layout import TABLES

SEED_H = 24000 * 16 / 20.0 / 3600  # one voc_c4_24k seed at 20 images/s: 5.333 h


def _write(tmp_path, text: str, name: str = "suite.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_suites_take_protocols_seeds_and_datasets_from_the_tables():
    assert {"care", "gsg", "maskco", "quick"} <= set(known_suites())
    care = {e.protocol: e for e in load_suite("care").entries}
    assert list(care) == ["coco_c4_1x", "voc_c4_24k", "coco_fpn_1x", "linear_care",
                          "semisup_1pct", "semisup_10pct"]  # fmt: skip
    assert {e.seeds for e in care.values()} == {TABLES["table4"].min_seeds}
    gsg = {e.protocol: e for e in load_suite("gsg").entries}
    # manyshot and manyshot_C share manyshot_linear: run once, every dataset of the tables
    assert gsg["manyshot_linear"].tables == ["manyshot", "manyshot_C"]
    assert gsg["manyshot_linear"].datasets[:2] == ["aircraft", "caltech101"]
    many = gsg["manyshot_linear"].datasets
    assert len(many) == 11 and "mean" not in many
    assert len(gsg["fewshot"].datasets) == 4 + 10  # CD-FSL's four, ten many-shot ones
    assert gsg["ade20k_upernet"].seeds == TABLES["segmentation"].min_seeds == 3
    assert "ade20k_upernet_ignorepad" not in gsg and gsg["knn"].seeds == 1
    quick = {e.protocol: e for e in load_suite("quick").entries}
    assert quick["manyshot_linear"].datasets == ["dtd", "pets"]
    assert quick["voc_c4_24k"].overrides(False)[:2] == ["SOLVER.MAX_ITER", "2000"]


@pytest.mark.parametrize(
    "text, error, words",
    [
        ("tables: [nosuch]", BadInput, "not one of"),
        ("tables: [{table: table4, protocols: [knn]}]", BadInput, "has no protocol 'knn'"),
        ("tables: [cifar]", ConfigError, "python -m pretrain"),
        ("tables: [{table: table4, opts: [SOLVER.MAX_ITER]}]", BadInput, "KEY VALUE"),
        ("tables: [{table: manyshot, datasets: [imagenet]}]", BadInput, "no datasets"),
        ("tables: [{table: table4, seed: 3}]", BadInput, "unknown keys"),
        ("name: x", BadInput, "'tables' list"),
        ("tables: [table4", BadInput, "not valid YAML"),
    ],
)
def test_a_bad_suite_is_one_line_naming_the_problem(tmp_path, text, error, words):
    with pytest.raises(error, match=words):
        load_suite(str(_write(tmp_path, text)))


def test_an_unknown_suite_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="shipped: care, gsg, maskco, quick"):
        load_suite("cvpr")


def _throughputs(tmp_path):
    rows = [
        Throughput("voc_c4_24k", "H100", "fp32", 20.0, "runner", "2026-01-02", "cmd a"),
        Throughput("voc_c4_24k", "H100", "fp32", 40.0, "bare", "2026-01-03", "cmd b"),
        Throughput(
            "knn", "H100", "fp32", 1331167 / 7200, "estimate", "2026-01-01", "doc", "", "a guess"
        ),
    ]
    return load(record(rows, tmp_path / "tp.json"))


def _seed(folder, metrics=None, iteration=None, failed=None):
    folder.mkdir(parents=True)
    if iteration is not None:
        solver = {"SOLVER": {"MAX_ITER": 24000, "IMS_PER_BATCH": 16}}
        (folder / "config.yaml").write_text(yaml.safe_dump(solver))
        (folder / "train_metrics.jsonl").write_text(
            json.dumps({"iteration": iteration, "time": 0.8}) + "\n"
        )
        (folder / "last_checkpoint").write_text("model_0011999.pth")
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if failed is not None:
        (folder / "failed.json").write_text(json.dumps({"error": failed}))


def test_plan_gpu_hours_by_hand(tmp_path):
    suite = load_suite(str(_write(tmp_path, "tables: [{table: table4, protocols: [voc_c4_24k]},"
                                            " {table: classification, protocols: [knn],"
                                            " seeds: 1}, {table: table5}]")))  # fmt: skip
    out = tmp_path / "out"
    run = out / "voc_c4_24k" / "a"
    _seed(run / "seed0", metrics={"bbox": {"AP": 50.0, "AP50": 80.0}, "wall_time_s": 10})
    _seed(run / "seed1", iteration=12000)  # half done: half a seed left
    rows = build_plan(suite, ["a.pth", "b.pth"], out, _throughputs(tmp_path), "H100")
    voc = {r.stem: r for r in rows if r.protocol == "voc_c4_24k"}
    # the runner figure (20 images/s) is preferred over the bare step's 40
    assert voc["b"].hours == pytest.approx(5 * SEED_H)
    assert voc["a"].hours == pytest.approx(3.5 * SEED_H)
    assert voc["a"].finished == 1 and voc["a"].state() == "seed 1 at it 12000 of 24000"
    assert voc["a"].source() == "H100 runner 2026-01-02"
    knn = [r for r in rows if r.protocol == "knn"]
    assert knn[0].estimated and knn[0].hours == pytest.approx(2.0)  # 1.33M images at half/h
    fpn = [r for r in rows if r.protocol == "coco_fpn_1x"]
    assert fpn[0].hours is None and fpn[0].source() == "not measured"
    t = totals(rows)
    assert t.hours == pytest.approx(8.5 * SEED_H) and t.estimated_hours == pytest.approx(4.0)
    assert (t.not_measured, t.seeds, t.seeds_left) == (2, 22, 21)
    # longest first on 2 GPUs: 5.33 h seeds alternate, a's half seed and the two 2 h knn last
    seeds = sorted([SEED_H] * 8 + [SEED_H / 2] + [2.0, 2.0], reverse=True)
    loads = [0.0, 0.0]
    for h in seeds:
        loads[loads.index(min(loads))] += h
    assert wall_hours(rows, 2) == pytest.approx(max(loads))
    assert wall_hours(rows, 1) == pytest.approx(sum(seeds))
    text = views.plan_text(rows, "H100", "fp32", 2, 1)
    assert max(map(len, text.splitlines())) <= 80
    assert "26.7 [1]" in text and "~2.00 [2]" in text and "not measured" in text
    assert "[2] estimate (a guess)" in text


def test_overrides_and_amp_change_the_cost(tmp_path):
    text = "tables: [{table: table4, protocols: [voc_c4_24k], seeds: 1, opts: [x, 1]}]"
    text = text.replace("[x, 1]", "[SOLVER.MAX_ITER, 2400]")
    suite = load_suite(str(_write(tmp_path, text)))
    tp = _throughputs(tmp_path)
    (row,) = build_plan(suite, ["a.pth"], tmp_path, tp, "H100")
    assert row.hours == pytest.approx(SEED_H / 10) and row.work == "2400 it x 16"
    (row,) = build_plan(suite, ["a.pth"], tmp_path, tp, "H100", precision="amp")
    assert row.hours is None


def test_throughput_records_replace_their_own_kind(tmp_path):
    path = tmp_path / "tp.json"
    record([Throughput("x", "H100", "fp32", 1.0, "runner", "2026-01-01", "c")], path)
    record([Throughput("x", "H100", "fp32", 2.0, "runner", "2026-02-01", "c"),
            Throughput("x", "H100", "fp32", 3.0, "steady", "2026-02-01", "c")], path)  # fmt: skip
    recs = load(path)
    assert len(recs) == 2 and lookup(recs, "x", "H100", "fp32").images_per_s == 2.0
    assert lookup(recs, "x", "H200", "fp32") is None
    assert gpu_kind("NVIDIA H100 80GB HBM3") == "H100" and gpu_kind("NVIDIA H200") == "H200"
    assert gpu_kind("CPU") == "cpu"
    path.write_text("{}")
    with pytest.raises(BadInput, match="not a throughput file"):
        load(path)


def test_the_shipped_throughputs_name_their_source():
    recs = load()
    assert {"voc_c4_24k", "coco_fpn_1x", "feature_extraction"} <= {r.key for r in recs}
    for r in recs:
        assert r.date and r.command and r.images_per_s > 0
        assert r.measured or r.scales_from  # an estimate says what it scales from


HOLD = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1]); lock.acquire()
print("held", flush=True); time.sleep(60)
"""


def test_status_of_finished_running_failed_partial_and_pending_seeds(tmp_path):
    suite = load_suite(str(_write(tmp_path, "tables: [{table: table4, protocols: [voc_c4_24k]}]")))
    out = tmp_path / "out"
    run = out / "voc_c4_24k" / "a"
    _seed(run / "seed0", metrics={"bbox": {"AP": 50.0, "AP50": 80.0}, "wall_time_s": 3725})
    _seed(run / "seed1", iteration=12000)
    (run / "seed1" / "sessions.json").write_text(json.dumps(
        {"sessions": [{"status": "running", "started_at": time.time() - 100, "start_iter": 11000}]}
    ))  # fmt: skip
    _seed(run / "seed2", failed="FloatingPointError: loss is NaN at iteration 9\n")
    _seed(run / "seed3", iteration=6000)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run / "seed1.lock")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        (row,) = build_plan(suite, ["a.pth"], out, [], "H100")
        states = [p.state for p in row.progress]
        assert states == ["finished", "running", "failed", "partial", "pending"]
        running = row.progress[1]
        # 16 images per 0.8 s; detectron2 gave no eta_seconds: 1000 iterations in ~100 s
        assert running.images_per_s == pytest.approx(20.0)
        assert (running.iteration, running.total) == (12000, 24000)
        # (the clock also ran while the test started its lock holder: a few seconds at most)
        assert running.eta_s == pytest.approx(12000 * 0.1, rel=0.1)
        text = views.status_text([row], "suite t")
        assert max(map(len, text.splitlines())) <= 80
        assert "FloatingPointError: loss is NaN at iteration 9" in text
        assert "bbox AP 50.00 AP50 80.00  (1h02m)" in text
        assert "6000/24000" in text and "ETA 20m" in text
        assert "1 finished, 1 running, 1 failed, 1 partial, 1 pending" in text
        data = views.status_json([row])
        assert data["totals"] == {"finished": 1, "running": 1, "failed": 1, "partial": 1,
                                  "pending": 1}  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert seed_progress(run / "seed1").state == "partial"  # its holder is gone


def test_free_gpus_from_nvidia_smi():
    smi = "0, 70000\n1, 3\n2, 500\n3, 2048\n"
    assert parse_free(smi, None, 4) == ["1", "2"]
    assert parse_free(smi, "3,2", 2) == ["2"]


def test_difference_interval_by_hand():
    a, b = Stat([1.0, 2.0, 3.0]), Stat([2.0, 3.0, 4.0, 5.0])
    va, vb = 1.0 / 3, (5.0 / 3) / 4  # sample variances / n
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    from scipy.stats import t

    assert diff_ci95(a, b) == pytest.approx(t.ppf(0.975, df) * math.sqrt(va + vb))
    assert math.isnan(diff_ci95(Stat([1.0]), b))


def test_a_benchmark_records_its_figures_with_their_provenance(tmp_path):
    from bench.throughputs import record_benchmark

    path = tmp_path / "tp.json"
    figures = [("voc_c4_24k", "fp32", 21.137, "runner"), ("voc_c4_24k", "amp", 25.7, "bare")]
    record_benchmark(path, figures, "NVIDIA H100 80GB HBM3", "benchmarks/speed/x.py",
                     ["--iters", "10"])  # fmt: skip
    recs = load(path)
    runner = lookup(recs, "voc_c4_24k", "H100", "fp32")
    assert runner.images_per_s == 21.14 and runner.what == "runner"
    assert runner.command == "python benchmarks/speed/x.py --iters 10"
    assert runner.machine.startswith("NVIDIA H100 80GB HBM3, ") and runner.date
    assert lookup(recs, "voc_c4_24k", "H100", "amp").what == "bare"


def test_plan_json_and_status_watch(tmp_path):
    import signal

    suite = _write(tmp_path, "tables: [{table: table4, protocols: [voc_c4_24k], seeds: 2}]")
    _seed(tmp_path / "out" / "voc_c4_24k" / "a" / "seed0", iteration=6000)
    tp = tmp_path / "tp.json"
    record([Throughput("voc_c4_24k", "H100", "fp32", 20.0, "runner", "2026-01-02", "c")], tp)
    base = [sys.executable, "-m", "bench"]
    common = ["--suite", str(suite), "--weights", "a.pth", "--output", str(tmp_path / "out")]
    cmd = [*base, "plan", *common, "--gpu", "H100", "--throughputs", str(tp), "--json"]
    res = subprocess.run([*cmd, "--gpus", "2"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    (row,) = plan["rows"]
    assert row["gpu_hours"] == pytest.approx(1.75 * SEED_H) and row["images_per_seed"] == [384000]
    assert row["state"] == "seed 0 at it 6000 of 24000"
    assert plan["totals"]["wall_hours"] == pytest.approx(SEED_H)  # 0.75 and 1 seed on 2 GPUs
    watch = subprocess.Popen([*base, "status", *common, "--watch", "0.3", "--no-report"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(8)
    watch.send_signal(signal.SIGINT)
    out, _ = watch.communicate(timeout=60)
    assert watch.returncode == 0
    assert out.count("s0  partial  6000/24000") >= 2  # refreshed
    assert out.count("suite:         1 partial, 1 pending") >= 2


def test_comparison_of_two_rows_by_hand():
    from tables.compare import compare_rows, to_html
    from tables.layout import Row

    spec = TABLES["table4"]
    a = Row("ours", "BYOL", "200", weights="byol", cells={"voc_AP": Stat([50.0, 50.5])})
    b = Row("ours", "CARE", "200", weights="care",
            cells={"voc_AP": Stat([55.0, 56.0, 55.5]), "voc_AP50": Stat([80.0])})  # fmt: skip
    (d,) = compare_rows(spec, [a, b], "byol", ["care"])  # AP50: only one side has it
    assert (d.column, d.mean_a, d.mean_b, d.diff) == ("voc_AP", 50.25, 55.5, 5.25)
    assert d.ci95 == pytest.approx(diff_ci95(a.cells["voc_AP"], b.cells["voc_AP"]))
    from scipy.stats import ttest_ind

    assert d.p == pytest.approx(ttest_ind([55, 56, 55.5], [50, 50.5], equal_var=False).pvalue)
    html = to_html([d], 2, str)
    assert "B = CARE (care) against A = BYOL (byol)" in html and "+5.25" in html
    assert 'class="sig"' in html  # the interval excludes 0
