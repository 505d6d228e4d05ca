"""tables: aggregation statistics, config checks, and the generated tables / plots."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from tables import __main__ as cli
from tables.aggregate import Stat, TablesError, collect, welch
from tables.layout import REFERENCE_DIR

CONFIG = {
    "MODEL": {"WEIGHTS": "/x/w.pkl", "PIXEL_STD": [58.395, 57.12, 57.375]},
    "SOLVER": {"BASE_LR": 0.02, "MAX_ITER": 24000},
    "SEED": 0,
    "OUTPUT_DIR": "/x",
}


def make_seed(
    root: Path,
    protocol: str,
    weights: str,
    k: int,
    tasks: dict,
    *,
    meta: dict | None = None,
    config: dict | None = None,
    sha: str = "abc",
    dataset: str = "real",
) -> Path:
    d = root / protocol / weights / f"seed{k}"
    d.mkdir(parents=True)
    cfg = json.loads(json.dumps(config or CONFIG))
    cfg["SEED"], cfg["OUTPUT_DIR"] = 1000 + k, str(d)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    m = {
        "protocol": protocol,
        "base_protocol": protocol.removesuffix("_smoke"),
        "dataset": dataset,
        "seed": 1000 + k,
        "seed_index": k,
        "wall_time_s": 1.0,
        "weights": {"stem": weights, "sha256": sha, "meta": meta or {}},
        **tasks,
    }
    (d / "metrics.json").write_text(json.dumps(m))
    return d


def md_rows(md: str) -> list[list[str]]:
    """The cells of every row of a Markdown pipe table (header and rule excluded)."""
    lines = [x for x in md.splitlines() if x.startswith("|")]
    return [[c.strip() for c in x.strip().strip("|").split("|")] for x in lines[2:]]


def voc(ap: float, ap50: float, ap75: float) -> dict:
    return {"bbox": {"AP": ap, "AP50": ap50, "AP75": ap75}}


def coco(det: float, seg: float) -> dict:
    return {
        "bbox": {"AP": det, "AP50": det + 20, "AP75": det + 3},
        "segm": {"AP": seg, "AP50": seg + 20, "AP75": seg + 2},
    }


def test_stat_by_hand():
    s = Stat([40.0, 42.0, 44.0])
    assert s.mean == 42.0 and s.std == pytest.approx(2.0) and s.n == 3
    # t_{0.975, 2} = 4.302653; 4.302653 * 2 / sqrt(3) = 4.968275
    assert s.ci95 == pytest.approx(4.968275, abs=1e-5)
    assert math.isnan(Stat([1.0]).std) and math.isnan(Stat([1.0]).ci95)


def test_welch_by_hand():
    # means 2 and 5, variances 1 and 1, n 3 and 3: t = -3/sqrt(2/3) = -3.6742, df = 4
    p = welch(Stat([1.0, 2.0, 3.0]), Stat([4.0, 5.0, 6.0]))
    assert p == pytest.approx(0.021312, abs=1e-5)


def test_collect_aggregates_and_reports_unfinished(tmp_path):
    for k, ap50 in enumerate([80.0, 82.0, 84.0]):
        make_seed(tmp_path, "voc_c4_24k", "care_r50", k, voc(55.0 + k, ap50, 60.0))
    (tmp_path / "voc_c4_24k" / "care_r50" / "seed3").mkdir()  # started, never finished
    failed = tmp_path / "voc_c4_24k" / "care_r50" / "seed4"
    failed.mkdir()
    (failed / "failed.json").write_text(json.dumps({"error": "FloatingPointError: NaN"}))
    (g,) = collect([tmp_path])
    s = g.stat("bbox", "AP50")
    assert (s.mean, s.std, s.n) == (82.0, 2.0, 3) and g.few_seeds
    assert [p.name for p in g.unfinished] == ["seed3"]
    assert g.failed[0][0].name == "seed4" and "NaN" in g.failed[0][1]


def test_the_console_flags_too_few_seeds_by_each_tables_own_number(tmp_path, capsys):
    """Detection asks for 5 seeds, segmentation for 3, the deterministic many-shot linear
    protocol for 1, a protocol no table knows for 5."""
    for k in (0, 1):
        make_seed(tmp_path, "voc_c4_24k", "w", k, voc(55.0, 80.0, 60.0))
        make_seed(tmp_path, "ade20k_upernet", "w", k, {"headline": {"mIoU": 30.0}})
    make_seed(tmp_path, "manyshot_linear", "w/cifar10", 0, {"headline": {"cifar10": 90.0}})
    make_seed(tmp_path, "no_table_knows", "w", 0, {"cls": {"top1": 1.0}})
    cli.summarise_groups(collect([tmp_path]), tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert "voc_c4_24k/w: 2 finished (fewer than 5 seeds)" in lines
    assert "ade20k_upernet/w: 2 finished (fewer than 3 seeds)" in lines
    assert "manyshot_linear/w: 1 finished" in lines
    assert "no_table_knows/w: 1 finished (fewer than 5 seeds)" in lines
    flags = {g["protocol"]: g["few_seeds"] for g in
             json.loads((tmp_path / "groups.json").read_text())}  # fmt: skip
    assert flags == {"voc_c4_24k": True, "ade20k_upernet": True, "manyshot_linear": False,
                     "no_table_knows": True}  # fmt: skip
    assert cli.min_seeds("manyshot_linear") == 1 and cli.min_seeds("fewshot_smoke") == 1


def test_differing_configs_are_refused_naming_the_key(tmp_path):
    make_seed(tmp_path, "voc_c4_24k", "w", 0, voc(1, 2, 3))
    other = json.loads(json.dumps(CONFIG))
    other["SOLVER"]["BASE_LR"] = 0.01
    other["MODEL"]["WEIGHTS"] = "/elsewhere/w.pkl"  # paths may differ; the sha may not
    make_seed(tmp_path, "voc_c4_24k", "w", 1, voc(1, 2, 3), config=other)
    with pytest.raises(TablesError, match=r"SOLVER\.BASE_LR differs"):
        collect([tmp_path])


def test_different_weights_with_same_name_are_refused(tmp_path):
    make_seed(tmp_path, "voc_c4_24k", "w", 0, voc(1, 2, 3), sha="aaa")
    make_seed(tmp_path, "voc_c4_24k", "w", 1, voc(1, 2, 3), sha="bbb")
    with pytest.raises(TablesError, match="different weights files"):
        collect([tmp_path])


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(TablesError, match="no seed folders"):
        collect([tmp_path])
    d = make_seed(tmp_path, "voc_c4_24k", "w", 0, voc(1, 2, 3))
    (d / "metrics.json").write_text("{not json")
    with pytest.raises(TablesError, match=re.escape(str(d / "metrics.json"))):
        collect([tmp_path])
    (d / "metrics.json").unlink()
    make_seed(tmp_path, "lvis_mystery", "w", 0, voc(1, 2, 3))
    with pytest.raises(TablesError, match="no table knows protocol 'lvis_mystery'"):
        cli.main(cli.get_args_parser().parse_args(["--runs", str(tmp_path)]))


def _csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.mark.parametrize(
    "table,source",
    [
        ("table4", "care_main_table4"),
        ("table4", "care_supp_table3"),
        ("table5", "care_main_table5"),
    ],
)
def test_reference_rows_reproduce_the_paper(table, source, tmp_path):
    args = cli.get_args_parser().parse_args(
        ["--reference-only", "--out", str(tmp_path), "--source", source]
    )
    cli.main(args)
    ours = _csv_rows(tmp_path / f"{table}.csv")
    paper_file = "care_table4_c4.csv" if table == "table4" else "care_table5_fpn.csv"
    with open(REFERENCE_DIR / paper_file) as f:
        paper = [r for r in csv.DictReader(f) if r["source"] == source]
    assert len(ours) == len(paper)
    for a, b in zip(ours, paper):
        assert (a["method"], a["epochs"], a["source"]) == (b["method"], b["epochs"], b["source"])
        for key in b:
            if key in ("source", "method", "epochs"):
                continue
            assert (float(a[key]) if a[key] else None) == (float(b[key]) if b[key] else None), key


def _our_runs(root: Path) -> None:
    meta_care = {"method": "CARE", "epochs": 200}
    meta_byol = {"method": "BYOL", "epochs": 200}
    for k in range(5):
        make_seed(
            root,
            "voc_c4_24k",
            "care_r50",
            k,
            voc(58.5 + 0.1 * k, 83.5, 65.0),
            meta=meta_care,
            sha="c",
        )
        make_seed(
            root, "coco_c4_1x", "care_r50", k, coco(39.8 + 0.1 * k, 34.9), meta=meta_care, sha="c"
        )
        make_seed(
            root,
            "voc_c4_24k",
            "byol_r50",
            k,
            voc(56.0 + 0.1 * k, 82.0, 63.0),
            meta=meta_byol,
            sha="b",
        )
    for k in range(2):
        make_seed(
            root,
            "voc_c4_24k_smoke",
            "care_r50",
            k,
            voc(0.5 + k, 1.0, 0.1),
            meta=meta_care,
            sha="c",
            dataset="synthetic",
        )


def test_tables_latex_matches_csv_and_bolds_best_two(tmp_path):
    _our_runs(tmp_path)
    written = cli.main(
        cli.get_args_parser().parse_args(
            ["--runs", str(tmp_path), "--compare", "byol_r50", "care_r50"]
        )
    )
    rows = _csv_rows(written["table4.csv"])
    care = next(r for r in rows if r["weights"] == "care_r50" and r["synthetic"] == "0")
    assert float(care["voc_AP"]) == pytest.approx(58.7) and care["voc_AP_n"] == "5"
    assert float(care["voc_AP_std"]) == pytest.approx(math.sqrt(0.025))
    # default delta: the paper's CARE 200ep row (VOC AP 57.7)
    assert float(care["voc_AP_delta"]) == pytest.approx(1.0)
    assert float(care["voc_AP_p"]) < 1e-6 and care["p_vs"].startswith("BYOL")
    tex = written["table4.tex"].read_text()
    line = next(x for x in tex.splitlines() if x.startswith("CARE (care\\_r50) &"))
    cells = re.findall(r"\$(.*?)\$(?= &| \\\\)", line)
    voc_cell = cells[6]  # columns: 6 COCO, then VOC AP
    assert voc_cell == r"\mathbf{58.7 \pm 0.2}^{\dagger}"
    assert cells[0] == r"\mathbf{40.0 \pm 0.2}"  # COCO det AP 39.8..40.2 beats the paper
    # best two per column: VOC AP -> ours (58.7) and the paper's CARE 400 (57.9), not 200
    bold_voc = [
        x.split(" & ")[:2]
        for x in tex.splitlines()
        if " & " in x and len(x.split(" & ")) > 8 and r"\mathbf" in x.split(" & ")[8]
    ]
    assert bold_voc == [["CARE", "400"], ["CARE (care\\_r50)", "200"]]
    md = written["table4.md"].read_text()
    assert ["CARE (care_r50)", "200", "5"] in [r[:3] for r in md_rows(md)]
    assert "2*" in md and "(synthetic)" in md
    assert "+1.0" in md and "†" in md
    from PIL import Image

    for name in ("table4_voc_c4_24k.png", "table4_coco_c4_1x.png", "table4_voc_c4_24k_smoke.png"):
        with Image.open(written[name]) as im:
            assert im.size[0] > 300
    groups = json.loads((tmp_path / "tables" / "groups.json").read_text())
    assert {g["protocol"] for g in groups} == {"voc_c4_24k", "coco_c4_1x", "voc_c4_24k_smoke"}


@pytest.mark.parametrize(
    "table,source,paper_file,factor",
    [
        ("table2", "care_main_table2", "care_linear_r50.csv", None),
        ("table2", "care_supp_table1", "care_supp_table1_linear.csv", None),
        ("table3", "care_main_table3a", "care_semisup.csv", None),
        ("table3", "care_supp_table2", "care_semisup.csv", None),
        ("table6", "care_main_table6", "care_ablations_r50_100ep.csv", "lambda"),
        ("table7", "care_main_table7", "care_ablations_r50_100ep.csv", "n_blocks"),
        ("table8", "care_main_table8", "care_ablations_r50_100ep.csv", "position_encoding"),
        ("design", "care_main_text", "care_ablations_r50_100ep.csv", "design"),
        ("multilayer", "maskco_supp_table1", "maskco_supp_table1_multilayer_linear.csv", None),
    ],
)
def test_classification_reference_rows_reproduce_the_csvs(
    table, source, paper_file, factor, tmp_path
):
    args = cli.get_args_parser().parse_args(
        ["--reference-only", "--out", str(tmp_path), "--source", source]
    )
    cli.main(args)
    ours = _csv_rows(tmp_path / f"{table}.csv")
    with open(REFERENCE_DIR / paper_file) as f:
        paper = [r for r in csv.DictReader(f) if r["source"] == source]
    assert len(ours) == len(paper) > 0
    for a, b in zip(ours, paper):
        assert a["method"] == (b["value"] if factor else b["method"])
        assert a["arch"] == b.get("arch", "") and a["source"] == source
        for key in b:
            if key in ("source", "method", "epochs", "arch", "params_M", "gflops", "factor"):
                continue
            if key == "value":
                continue
            assert (float(a[key]) if a[key] else None) == (float(b[key]) if b[key] else None), key


def cls_result(**values) -> dict:
    return {"cls": values}


def test_classification_rows_carry_mean_and_std_and_ablation_values(tmp_path):
    runs = tmp_path / "runs"
    care = {"method": "CARE", "epochs": 100, "options": {"lambda_att": 10.0, "pos_enc": "sine"}}
    cfg = {"protocol": {"epochs": 80}, "MODEL": {"WEIGHTS": "w"}, "SEED": 0, "OUTPUT_DIR": "x"}
    for k, top1 in enumerate((70.0, 71.0, 72.0)):
        make_seed(runs, "linear_care", "care_l10", k, cls_result(top1=top1, top5=90.0 + k),
                  meta=care, config=cfg, sha="c")  # fmt: skip
        make_seed(runs, "knn", "care_l10", k, cls_result(k20_top1=60.0, k200_top1=61.0),
                  meta=care, config=cfg, sha="c")  # fmt: skip
        m = json.loads((runs / "linear_care/care_l10" / f"seed{k}/metrics.json").read_text())
        m["arch"] = "ResNet-50"
        (runs / "linear_care/care_l10" / f"seed{k}/metrics.json").write_text(json.dumps(m))
    args = cli.get_args_parser().parse_args(["--runs", str(runs), "--out", str(tmp_path / "t")])
    written = cli.main(args)
    assert {"table2.md", "table6.md", "table8.md", "classification.md"} <= set(written)
    # the checkpoint records no n_blocks: Table 7 keeps the paper's rows alone
    assert all(r["kind"] == "paper" for r in _csv_rows(tmp_path / "t/table7.csv"))
    row = next(r for r in _csv_rows(tmp_path / "t/table6.csv") if r["kind"] == "ours")
    assert row["method"] == "10" and float(row["top1"]) == pytest.approx(71.0)
    assert float(row["top1_delta"]) == pytest.approx(71.0 - 70.96)  # the paper's lambda = 10
    assert float(row["top1_std"]) == pytest.approx(1.0) and row["top1_n"] == "3"
    row8 = next(r for r in _csv_rows(tmp_path / "t/table8.csv") if r["kind"] == "ours")
    assert row8["method"] == "sin-cos absolute"
    md = (tmp_path / "t/table2.md").read_text()
    row = ["CARE (care_l10)", "100", "ResNet-50", "3*", "71.0 ± 1.0", "91.0 ± 1.0"]
    assert row in [r[:6] for r in md_rows(md)]
    summary = (tmp_path / "t/classification.md").read_text()
    assert "60.0 ± 0.0" in summary and "71.0 ± 1.0" in summary
    row = next(r for r in md_rows(summary) if r[0] == "CARE (care_l10)")
    assert not any("**" in c for c in row)  # one row per column: no "best two" to mark
    # linear_care is in several tables: one plot per table, none overwritten by another
    plots = {n for n in written if n.endswith("_linear_care.png")}
    assert {
        "table2_linear_care.png",
        "table6_linear_care.png",
        "classification_linear_care.png",
    } <= plots
    assert len({written[n].read_bytes() for n in plots}) == len(plots)


def test_plot_labels_tell_the_papers_rows_apart():
    """Table 2 has BYOL 800 for four architectures: each paper point is labelled with its
    arch, so no two labels of a column are the same."""
    from tables.layout import TABLES, read_reference
    from tables.plot import paper_means

    spec = TABLES["table2"]
    labels = [label for label, _ in paper_means(read_reference(spec), "top1")]
    assert len(labels) > 4 and len(set(labels)) == len(labels)
    assert "paper: BYOL 800 ResNet-101" in labels


def _recognition_seed(root: Path, weights: str, task: str, test: float, C: float, sha: str):
    d = root / "manyshot_linear" / weights / task / "seed0"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"protocol": {"solver": "sklearn"}}))
    m = {"protocol": "manyshot_linear", "base_protocol": "manyshot_linear", "dataset": "real",
         "seed": 1000, "seed_index": 0, "wall_time_s": 1.0, "arch": "ResNet-50",
         "weights": {"stem": weights, "sha256": sha, "meta": {"method": weights.upper()}},
         "task": task, "test": test, "best_C": C, "headline": {task: test},
         "selected_C": {task: C}}  # fmt: skip
    (d / "metrics.json").write_text(json.dumps(m))


def test_manyshot_tables_one_row_per_weights_with_the_mean_and_selected_c(tmp_path):
    from tables.layout import RECOGNITION_DATASETS

    names = [d for d, _ in RECOGNITION_DATASETS]
    for k, task in enumerate(names):
        _recognition_seed(tmp_path, "care_r50", task, 50.0 + k, 10.0 ** (k - 5), "a")
        if task != "voc2007":  # byol is missing one dataset: no mean
            _recognition_seed(tmp_path, "byol_r50", task, 40.0 + k, 0.5, "b")
    args = cli.get_args_parser().parse_args(["--runs", str(tmp_path), "--decimals", "2"])
    written = cli.main(args)
    rows = {r["weights"]: r for r in _csv_rows(written["manyshot.csv"])}
    care = rows["care_r50"]
    assert [float(care[d]) for d in names] == [50.0 + k for k in range(11)]
    assert float(care["mean"]) == pytest.approx(55.0)  # (50 + ... + 60) / 11, by hand
    assert rows["byol_r50"]["mean"] == "" and rows["byol_r50"]["voc2007"] == ""
    assert care["few_seeds"] == "0"  # a deterministic protocol: one seed is all it has
    paper = [r for r in _csv_rows(written["manyshot.csv"]) if r["kind"] == "paper"]
    assert {r["method"]: r["cifar10"] for r in paper} == {"DeepCluster-v2": "94.07",
                                                          "Supervised": "91.47"}  # fmt: skip
    c_rows = {r["weights"] or r["method"]: r for r in _csv_rows(written["manyshot_C.csv"])}
    assert float(c_rows["care_r50"]["cifar10"]) == pytest.approx(1e-2)
    assert float(c_rows["byol"]["aircraft"]) == pytest.approx(17782.8)  # run_linear.sh
    md = written["manyshot_C.md"].read_text()
    assert "**" not in md.split("\n", 1)[1]  # no bold
    assert "0.01" in next(r for r in md_rows(md) if r[0].startswith("CARE"))  # general format
    assert written["manyshot.png"].stat().st_size > 0 and written["manyshot_C.png"].exists()


def test_load_runs_is_one_tidy_row_per_seed_and_metric(tmp_path):
    from tables import load_runs
    from tables.aggregate import collect

    meta = {"method": "CARE", "epochs": 200}
    for k, ap in enumerate((50.0, 52.0, 54.0)):
        make_seed(tmp_path, "voc_c4_24k", "care_r50", k, voc(ap, ap + 30, ap + 5), meta=meta)
    (tmp_path / "voc_c4_24k/care_r50/seed3").mkdir()  # unfinished: no row
    _recognition_seed(tmp_path, "byol_r50", "cifar10", 91.5, 0.316, "b")
    df = load_runs(tmp_path)
    voc_rows = df[df.protocol == "voc_c4_24k"]
    # 3 seeds x (AP, AP50, AP75, wall_time_s)
    assert len(voc_rows) == 12 and set(voc_rows.metric) == {"bbox/AP", "bbox/AP50", "bbox/AP75",
                                                           "wall_time_s"}  # fmt: skip
    ap = voc_rows[voc_rows.metric == "bbox/AP"]
    assert ap.value.tolist() == [50.0, 52.0, 54.0] and ap.seed.tolist() == [1000, 1001, 1002]
    assert set(ap.family) == {"detection"} and set(ap.method) == {"CARE"}
    assert ap.epochs.tolist() == [200] * 3 and not ap.synthetic.any()
    # the aggregate over seeds is a groupby: it equals the tables' Stat
    stat = next(g for g in collect([tmp_path]) if g.protocol == "voc_c4_24k").stat("bbox", "AP")
    agg = ap.groupby("weights").value.agg(["mean", "std"]).loc["care_r50"]
    assert agg["mean"] == stat.mean and agg["std"] == pytest.approx(stat.std)
    # config fields as columns; a recognition seed's rows name its dataset
    assert ap["config.SOLVER.BASE_LR"].tolist() == [0.02] * 3
    rec = df[df.protocol == "manyshot_linear"].set_index("metric").value
    assert rec["headline/cifar10"] == 91.5 and rec["selected_C/cifar10"] == 0.316
    assert set(df[df.protocol == "manyshot_linear"].task) == {"cifar10"}
    assert str(df.value.dtype) == "float64" and str(df.seed.dtype) == "Int64"
    assert "config.SOLVER.BASE_LR" not in load_runs(tmp_path, config=False).columns
    with pytest.raises(TablesError, match="does not exist"):
        load_runs(tmp_path / "nowhere")


GOLDEN = Path(__file__).parent / "golden"  # the tables as the hand-written renderer wrote them


def _golden_runs(root: Path) -> dict[str, list[str]]:
    """The runs behind each golden folder, and the tables' arguments."""
    _our_runs(root / "t1")
    care = {"method": "CARE", "epochs": 100, "options": {"lambda_att": 10.0, "pos_enc": "sine"}}
    cfg = {"protocol": {"epochs": 80}, "MODEL": {"WEIGHTS": "w"}, "SEED": 0, "OUTPUT_DIR": "x"}
    for k, top1 in enumerate((70.0, 71.0, 72.0)):
        make_seed(root / "t2", "linear_care", "care_l10", k, cls_result(top1=top1, top5=90.0 + k),
                  meta=care, config=cfg, sha="c")  # fmt: skip
        make_seed(root / "t2", "knn", "care_l10", k, cls_result(k20_top1=60.0, k200_top1=61.0),
                  meta=care, config=cfg, sha="c")  # fmt: skip
    from tables.layout import RECOGNITION_DATASETS

    for k, (task, _) in enumerate(RECOGNITION_DATASETS):
        _recognition_seed(root / "t3", "care_r50", task, 50.0 + k, 10.0 ** (k - 5), "a")
        if task != "voc2007":
            _recognition_seed(root / "t3", "byol_r50", task, 40.0 + k, 0.5, "b")
    return {"t1": ["--compare", "byol_r50", "care_r50"], "t2": [], "t3": ["--decimals", "2"]}


def _md_content(text: str) -> list[list[str]]:
    """A Markdown file's lines without padding or blank lines; a rule row as its alignment."""
    out = []
    for line in filter(str.strip, text.splitlines()):
        cells = (
            [c.strip() for c in line.strip().strip("|").split("|")] if line[0] == "|" else [line]
        )
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            cells = ["right" if c.endswith(":") else "left" for c in cells]
        out.append(cells)
    return out


def test_pandas_rendering_reproduces_the_hand_written_tables(tmp_path):
    """CSV byte for byte; Markdown cell for cell (only padding and the blank line before the
    notes are new); LaTeX line for line but the blocks' row, where Styler spans the empty
    label cells with one multicolumn and writes a one-column block without one
    (docs/protocols.md lists these changes)."""
    for name, extra in _golden_runs(tmp_path / "runs").items():
        out = tmp_path / name
        cli.main(cli.get_args_parser().parse_args(
            ["--runs", str(tmp_path / "runs" / name), "--out", str(out), *extra]))  # fmt: skip
        files = sorted((GOLDEN / name).iterdir())
        assert files
        for want in files:
            got = (out / want.name).read_text()
            if want.suffix == ".csv":
                assert got == want.read_text(), want.name
            elif want.suffix == ".md":
                assert _md_content(got) == _md_content(want.read_text()), want.name
            else:
                a, b = got.splitlines(), want.read_text().splitlines()
                changed = [(x, y) for x, y in zip(a, b) if x != y]
                assert len(a) == len(b) and len(changed) == 1, want.name
                n_lead = 3 if "Arch" in got else 2
                x, y = changed[0]
                blank = " & " * n_lead  # the hand-written row: empty label cells
                assert y.startswith(blank), want.name
                y = re.sub(r"\\multicolumn\{1\}\{c\}\{([^}]*)\}", r"\1", y[len(blank) :])
                assert x == rf"\multicolumn{{{n_lead}}}{{c}}{{}} & " + y, want.name
