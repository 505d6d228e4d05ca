"""The papers' table layouts, their reference rows, and rows built from our runs.

Detection: CARE Table 4 (COCO Mask R-CNN R50-C4 1x, VOC07+12 Faster R-CNN R50-C4), Table 5
(COCO Mask R-CNN R50-FPN 1x), COCO C4 2x (MoCo / MaskCo's schedule) and GSG's protocols.
Classification: CARE Table 2 / supplementary Table 1 (linear top-1 / top-5 by method, arch
and epochs), Table 3 / supplementary Table 2 (semi-supervised), the ablations of Tables 6-8
and of the T-stream design (rows: the pretraining checkpoint's recorded lambda, n_blocks,
position encoding, design), MaskCo's multi-layer table (conv1..conv5), and a summary of the
linear and kNN protocols. Segmentation: ADE20K UPerNet (GSG / ssl-transfer). Smoke runs on
synthetic data fill the same columns in rows marked "(synthetic)".
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from tables.aggregate import Group, IntervalStat, Stat, TablesError, welch

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@dataclass(frozen=True)
class Column:
    key: str  # the reference CSV's column name, e.g. "coco_det_AP"
    label: str  # header, e.g. "AP^bb_50"
    block: str  # group header, e.g. "COCO det"
    protocol: str  # base protocol filling it
    task: str  # "bbox" or "segm"
    metric: str  # "AP", "AP50", "AP75"
    dataset: str = ""  # per-dataset protocols: the downstream dataset (default: metric)


def _cls(key: str, label: str, block: str, protocol: str, metric: str) -> Column:
    return Column(key, label, block, protocol, "cls", metric)


# The checkpoint option behind each ablation table, and the paper's names of its values.
FACTORS = {
    "lambda": ("lambda_att", "λ", lambda v: f"{float(v):g}"),
    "n_blocks": ("n_blocks", "n", str),
    "position_encoding": (
        "pos_enc",
        "Position encoding",
        {
            "none": "none",
            "sine": "sin-cos absolute",
            "abs": "learnable absolute",
            "rel": "learnable relative",
        }.get,
    ),
    "design": ("t_design", "Design", str),
    "mask": ("mask", "Mask", lambda v: "yes" if v in (True, "True", "true") else "no"),
}


def _block(prefix: str, block: str, protocol: str, task: str, sym: str) -> list[Column]:
    return [
        Column(f"{prefix}_{m}", f"{sym}{m[2:]}" if m != "AP" else sym, block, protocol, task, m)
        for m in ("AP", "AP50", "AP75")
    ]


# ssl-transfer's 11 many-shot datasets, in its order, and their column labels.
RECOGNITION_DATASETS = (
    ("aircraft", "Aircraft"), ("caltech101", "Caltech101"), ("cars", "Cars"),
    ("cifar10", "CIFAR10"), ("cifar100", "CIFAR100"), ("dtd", "DTD"), ("flowers", "Flowers"),
    ("food", "Food"), ("pets", "Pets"), ("sun397", "SUN397"), ("voc2007", "VOC2007"),
)  # fmt: skip


# ssl-transfer's few-shot datasets: CD-FSL's four, and the many-shot ones but VOC2007.
CDFSL_DATASETS = (("cropdiseases", "CropDiseases"), ("eurosat", "EuroSAT"), ("isic", "ISIC"),
                  ("chestx", "ChestX"))  # fmt: skip
FEWSHOT_SHOTS = (5, 20, 50)


def _fewshot_columns(datasets) -> list[Column]:
    return [
        Column(f"{d}_{k}", f"{k}-shot", label, "fewshot", "episodes", f"{d}_{k}shot", d)
        for d, label in datasets
        for k in FEWSHOT_SHOTS
    ]


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    columns: list[Column]
    reference_csv: str | tuple[str, ...] | None
    default_source: str | None
    arch_column: bool = False  # rows carry the backbone (CARE Table 2, 3)
    factor: str | None = None  # an ablation table: rows are values of this FACTORS key
    min_seeds: int = 5  # fewer finished seeds are marked (1: a deterministic protocol)
    mean_column: str | None = None  # key of a column holding the mean of the others
    rank: bool = True  # bold the best two of each column (not in a table of settings)
    fmt: str = ""  # a format spec for every cell instead of mean ± std at --decimals
    all_sources: bool = False  # every reference row, each labelled with its source
    only: tuple[tuple[str, object], ...] = ()  # method options a checkpoint must have
    batch_label: bool = False  # rows carry the pretraining batch in their label

    @property
    def reference_files(self) -> tuple[str, ...]:
        if self.reference_csv is None:
            return ()
        return (self.reference_csv,) if isinstance(self.reference_csv, str) else self.reference_csv

    @property
    def protocols(self) -> set[str]:
        return {c.protocol for c in self.columns}


TABLES: dict[str, TableSpec] = {
    "table4": TableSpec(
        "table4",
        "CARE Table 4: COCO Mask R-CNN R50-C4 1x and VOC07+12 Faster R-CNN R50-C4",
        _block("coco_det", "COCO det", "coco_c4_1x", "bbox", "APbb")
        + _block("coco_seg", "COCO seg", "coco_c4_1x", "segm", "APmk")
        + _block("voc", "VOC07+12 det", "voc_c4_24k", "bbox", "AP"),
        "care_table4_c4.csv",
        "care_main_table4",
    ),
    "table5": TableSpec(
        "table5",
        "CARE Table 5: COCO Mask R-CNN R50-FPN 1x",
        _block("coco_det", "COCO det", "coco_fpn_1x", "bbox", "APbb")
        + _block("coco_seg", "COCO seg", "coco_fpn_1x", "segm", "APmk"),
        "care_table5_fpn.csv",
        "care_main_table5",
    ),
    "c4_2x": TableSpec(
        "c4_2x",
        "COCO Mask R-CNN R50-C4 2x (MoCo / MaskCo schedule)",
        _block("coco_det", "COCO det", "coco_c4_2x", "bbox", "APbb")
        + _block("coco_seg", "COCO seg", "coco_c4_2x", "segm", "APmk"),
        None,
        None,
    ),
    "gsg_detection": TableSpec(
        "gsg_detection",
        "GSG's detection protocols: VOC07+12 Faster R-CNN R50-FPN (ssl-transfer, 144k at batch "
        "2) and COCO Mask R-CNN R50-FPN 3x",
        _block("voc", "VOC07+12 det (FPN)", "voc_fpn_144k", "bbox", "AP")
        + _block("coco_det", "COCO det (3x)", "coco_fpn_3x", "bbox", "APbb")
        + _block("coco_seg", "COCO seg (3x)", "coco_fpn_3x", "segm", "APmk"),
        None,
        None,
    ),
    "table2": TableSpec(
        "table2",
        "CARE Table 2 / supp. Table 1: ImageNet linear evaluation (linear_care)",
        [
            _cls("top1", "top-1", "Linear", "linear_care", "top1"),
            _cls("top5", "top-5", "Linear", "linear_care", "top5"),
        ],
        ("care_linear_r50.csv", "care_supp_table1_linear.csv"),
        "care_main_table2",
        arch_column=True,
    ),
    "table3": TableSpec(
        "table3",
        "CARE Table 3 / supp. Table 2: semi-supervised ImageNet (1% / 10% labels)",
        [
            _cls("top1_1pct", "1%", "Top-1", "semisup_1pct", "top1"),
            _cls("top1_10pct", "10%", "Top-1", "semisup_10pct", "top1"),
            _cls("top5_1pct", "1%", "Top-5", "semisup_1pct", "top5"),
            _cls("top5_10pct", "10%", "Top-5", "semisup_10pct", "top5"),
        ],
        "care_semisup.csv",
        "care_main_table3a",
        arch_column=True,
    ),
    **{
        name: TableSpec(
            name,
            f"{title} (ResNet-50, 100 epochs, linear_care top-1)",
            [_cls("top1", "top-1", "Linear", "linear_care", "top1")],
            "care_ablations_r50_100ep.csv",
            source,
            factor=factor,
        )
        for name, title, source, factor in (
            ("table6", "CARE Table 6: weight lambda of L_att", "care_main_table6", "lambda"),
            ("table7", "CARE Table 7: transformer blocks n", "care_main_table7", "n_blocks"),
            (
                "table8",
                "CARE Table 8: position encoding",
                "care_main_table8",
                "position_encoding",
            ),
            ("design", "CARE (text): T-stream design", "care_main_text", "design"),
        )
    },
    "maskco_coco": TableSpec(
        "maskco_coco",
        "MaskCo supp. Table 2: pretrained on COCO without the mask prediction head, mask on / "
        "off (VOC07+12 Faster R-CNN R50-C4; linear_multilayer conv4 / conv5 top-1)",
        _block("voc", "VOC07+12 det", "voc_c4_24k", "bbox", "AP")
        + [
            _cls("linear_conv4", "conv4", "Linear", "linear_multilayer", "conv4_top1"),
            _cls("linear_conv5", "conv5", "Linear", "linear_multilayer", "conv5_top1"),
        ],
        "maskco_supp_table2.csv",
        "maskco_supp_table2",
        factor="mask",
        only=(("mph", False),),
    ),
    "multilayer": TableSpec(
        "multilayer",
        "MaskCo supp. Table 1: multi-layer linear evaluation (linear_multilayer, top-1)",
        [
            _cls(c, c, "Top-1", "linear_multilayer", f"{c}_top1")
            for c in ("conv1", "conv2", "conv3", "conv4", "conv5")
        ],
        "maskco_supp_table1_multilayer_linear.csv",
        "maskco_supp_table1",
    ),
    **{
        name: TableSpec(
            name,
            title,
            [Column(d, label, block, protocol, task, d) for d, label in RECOGNITION_DATASETS]
            + ([Column("mean", "Mean", block, protocol, task, "mean")] if mean else []),
            csv_name,
            source,
            arch_column=True,
            min_seeds=1,
            mean_column="mean" if mean else None,
            rank=mean,
            fmt="" if mean else ".4g",
        )
        for name, protocol, title, block, task, csv_name, source, mean in (
            (
                "manyshot",
                "manyshot_linear",
                "GSG / ssl-transfer many-shot linear transfer: test metric per dataset (accuracy; "
                "mean per-class accuracy for Aircraft, Caltech101, Flowers, Pets; 11-point mAP "
                "for VOC2007)",
                "Many-shot linear",
                "headline",
                "sslt_manyshot_linear.csv",
                "sslt_readme",
                True,
            ),
            (
                "manyshot_finetune",
                "manyshot_finetune",
                "GSG / ssl-transfer many-shot fine-tuning: test metric per dataset (the best of "
                "20 (lr, weight decay) runs on val, retrained on trainval)",
                "Many-shot fine-tuning",
                "headline",
                "sslt_manyshot_finetune.csv",
                "sslt_readme",
                True,
            ),
            (
                "manyshot_C",
                "manyshot_linear",
                "Many-shot linear: the C = 1 / wd the validation sweep selected per dataset",
                "Selected C",
                "selected_C",
                "sslt_manyshot_selected_C.csv",
                "sslt_run_linear_sh",
                False,
            ),
        )
    },
    **{
        name: TableSpec(
            name,
            title,
            _fewshot_columns(datasets),
            "sslt_fewshot.csv",
            "sslt_readme",
            arch_column=True,
            min_seeds=1,
        )
        for name, title, datasets in (
            (
                "fewshot_cdfsl",
                "ssl-transfer few-shot (CD-FSL): 5-way ProtoNet accuracy, mean ± 95% interval "
                "over 600 episodes",
                CDFSL_DATASETS,
            ),
            (
                "fewshot_many",
                "ssl-transfer few-shot on the many-shot datasets (all splits pooled): 5-way "
                "ProtoNet accuracy, mean ± 95% interval over 600 episodes",
                tuple(x for x in RECOGNITION_DATASETS if x[0] != "voc2007"),
            ),
        )
    },
    "cifar": TableSpec(
        "cifar",
        "CIFAR pretraining (ResNet-18 CIFAR variant): kNN monitor top-1 (k 200, T 0.1, train "
        "set as the bank) at the best and the last epoch, and the best epoch; online linear "
        "probe top-1 at the last epoch (--online-probe; solo-learn's rows: its online "
        "classifier, 1000 epochs)",
        [
            Column(f"{pre}_{col}", label, block, "pretrain_knn", "knn", metric, ds)
            for pre, ds, block in (
                ("c10", "cifar10", "CIFAR-10 kNN"),
                ("c100", "cifar100", "CIFAR-100 kNN"),
            )
            for col, label, metric in (
                ("knn_best", "best", "best_top1_k200"),
                ("knn_last", "last", "top1_k200"),
                ("knn_epoch", "epoch", "best_epoch_k200"),
            )
        ]
        + [
            Column(f"{pre}_linear", label, "Online linear", "pretrain_knn", "probe", "top1", ds)
            for pre, ds, label in (
                ("c10", "cifar10", "CIFAR-10"),
                ("c100", "cifar100", "CIFAR-100"),
            )
        ],
        "lightly_solo_cifar.csv",
        None,
        arch_column=True,
        min_seeds=3,
        all_sources=True,
        batch_label=True,
    ),  # fmt: skip
    "segmentation": TableSpec(
        "segmentation",
        "ADE20K UPerNet R50 (GSG / ssl-transfer): mIoU (150 classes) and pixel accuracy, "
        "5-scale test; batch padding ignored: --ignore-padding",
        [
            Column(key, label, block, protocol, "headline", metric)
            for block, protocol, suffix in (
                ("ADE20K UPerNet", "ade20k_upernet", ""),
                ("Padding ignored", "ade20k_upernet_ignorepad", "_ignorepad"),
            )
            for key, label, metric in (
                (f"miou{suffix}", "mIoU", "mIoU"),
                (f"pixel_acc{suffix}", "Pixel acc.", "pixel_acc"),
            )
        ],
        "sslt_ade20k_upernet.csv",
        "sslt_semseg_results",
        min_seeds=3,
    ),
    "classification": TableSpec(
        "classification",
        "Classification protocols: linear (CARE, MoCo) and weighted kNN (GSG), top-1",
        [
            _cls("linear_care", "CARE", "Linear", "linear_care", "top1"),
            _cls("linear_moco", "MoCo", "Linear", "linear_moco", "top1"),
            _cls("knn_k20", "k=20", "kNN", "knn", "k20_top1"),
            _cls("knn_k200", "k=200", "kNN", "knn", "k200_top1"),
        ],
        None,
        None,
    ),
}


@dataclass
class Row:
    kind: str  # "paper" or "ours"
    method: str  # the method, or in an ablation table the factor's value
    epochs: str
    weights: str = ""
    arch: str = ""
    source: str = ""
    synthetic: bool = False
    cells: dict[str, Stat | float | None] = field(default_factory=dict)  # key -> value
    n_seeds: dict[str, int] = field(default_factory=dict)  # protocol -> finished seeds
    delta: dict[str, float] = field(default_factory=dict)
    delta_ref: str = ""
    pvalues: dict[str, float] = field(default_factory=dict)
    p_vs: str = ""
    min_seeds: int = 5

    @property
    def label(self) -> str:
        name = self.method + (f" ({self.weights})" if self.weights else "")
        return name + (" (synthetic)" if self.synthetic else "")

    def mean(self, key: str) -> float | None:
        v = self.cells.get(key)
        if isinstance(v, Stat):
            return v.mean
        return v

    @property
    def few_seeds(self) -> bool:
        return self.kind == "ours" and any(n < self.min_seeds for n in self.n_seeds.values())


def _reference_records(spec: TableSpec) -> list[dict]:
    records = []
    for name in spec.reference_files:
        with open(REFERENCE_DIR / name, newline="") as f:
            records += list(csv.DictReader(f))
    if spec.factor:
        records = [r for r in records if r["factor"] == spec.factor]
    return records


def read_reference(spec: TableSpec, source: str | None = None) -> list[Row]:
    """The paper's rows of one table: the ``source`` table of its CSVs when they have it
    (e.g. care_supp_table3 for Table 4), else its default source."""
    if spec.reference_csv is None:
        return []
    records = _reference_records(spec)
    if source not in {r["source"] for r in records}:
        source = spec.default_source
    rows = []
    for rec in records:
        if spec.all_sources or rec["source"] == source:
            cells = {
                c.key: float(rec[c.key]) if rec.get(c.key) not in (None, "") else None
                for c in spec.columns
            }
            for c in spec.columns:  # a reported interval (few-shot: mean +- 95%)
                if cells[c.key] is not None and rec.get(f"{c.key}_ci95") not in (None, ""):
                    cells[c.key] = IntervalStat([cells[c.key]], float(rec[f"{c.key}_ci95"]))
            method = rec["value"] if spec.factor else rec["method"]
            if spec.batch_label and rec.get("batch"):
                method += f" (bs {rec['batch']})"
            if spec.all_sources:
                method += f" [{rec['source']}]"
            epochs = "100" if spec.factor else rec.get("epochs", "")
            arch = rec.get("arch", "")
            rows.append(Row("paper", method, epochs, arch=arch, source=rec["source"],
                            cells=cells))  # fmt: skip
    if not rows:
        raise TablesError(f"no reference rows with source {source!r} in {spec.reference_csv}")
    return rows


def known_sources() -> set[str]:
    sources = set()
    for spec in TABLES.values():
        sources |= {r["source"] for r in _reference_records(spec)}
    return sources


def table_for(protocol: str) -> TableSpec:
    for spec in TABLES.values():
        if protocol in spec.protocols:
            return spec
    known = sorted({p for s in TABLES.values() for p in s.protocols})
    raise TablesError(
        f"no table knows protocol {protocol!r}; known protocols: {known} "
        "(and their '_smoke' variants)"
    )


def _row_identity(spec: TableSpec, g: Group, labels: dict) -> tuple[str, str, str] | None:
    """(method or factor value, epochs, arch) of a group's row; None when the group has no
    value of the table's factor (an ablation table lists CARE checkpoints only)."""
    meta = g.meta
    options = meta.get("options") or {}
    if any(options.get(k) != v for k, v in spec.only):
        return None  # another kind of checkpoint (e.g. MaskCo with its MPH)
    epochs = str(meta["epochs"]) if meta.get("epochs") is not None else ""
    arch = g.seeds[0].metrics.get("arch") or meta.get("arch") or ""
    if spec.factor:
        key, _, show = FACTORS[spec.factor]
        value = (meta.get("options") or {}).get(key)
        return None if value is None else (show(value) or str(value), epochs, arch)
    method, label_epochs = labels.get(g.weights, (None, None))
    method = method or meta.get("method") or g.weights
    if spec.batch_label and meta.get("batch"):
        method += f" (bs {meta['batch']})"
    return method, label_epochs or epochs, arch


def table_groups(spec: TableSpec, groups: list[Group], labels: dict | None = None) -> list[Group]:
    """The groups with finished seeds that make rows of ``spec`` (its protocols, and the
    checkpoints its factor / ``only`` select)."""
    return [g for g in groups if g.seeds and g.base_protocol in spec.protocols
            and _row_identity(spec, g, labels or {}) is not None]  # fmt: skip


def our_rows(spec: TableSpec, groups: list[Group], labels: dict[str, tuple[str, str]]) -> list[Row]:
    """One row per (weights, synthetic or real), merging the protocols of the table."""
    rows: dict[tuple[str, bool], Row] = {}
    for g in groups:
        if not g.seeds or g.base_protocol not in spec.protocols:
            continue
        ident = _row_identity(spec, g, labels)
        if ident is None:
            continue
        key = (g.weights, g.synthetic)
        if key not in rows:
            method, epochs, arch = ident
            rows[key] = Row("ours", method, epochs, weights=g.weights, arch=arch,
                            synthetic=g.synthetic, min_seeds=spec.min_seeds)  # fmt: skip
        row = rows[key]
        row.n_seeds[f"{g.base_protocol}/{g.task}" if g.task else g.base_protocol] = len(g.seeds)
        for c in spec.columns:
            if c.protocol == g.base_protocol and (not g.task or (c.dataset or c.metric) == g.task):
                if c.task == "episodes":
                    row.cells[c.key] = g.episode_stat(c.metric)
                else:
                    row.cells[c.key] = g.stat(c.task, c.metric)
    return sorted(rows.values(), key=lambda r: (r.synthetic, r.method, r.epochs, r.weights))


def add_deltas(spec: TableSpec, rows: list[Row], reference: str | None = None) -> None:
    """Delta of each of our cells against a paper row: ``reference`` = "Method:epochs", or by
    default the paper's CARE row of the same epochs (else the nearest epochs; of the same
    arch when the table has arch rows); in an ablation table, the row of the same value."""
    paper = [r for r in rows if r.kind == "paper"]
    if not paper:
        return
    for row in rows:
        if row.kind != "ours":
            continue
        if reference:
            method, _, epochs = reference.partition(":")
            cand = [r for r in paper if r.method == method and (not epochs or r.epochs == epochs)]
            if not cand:
                raise TablesError(
                    f"reference row {reference!r} not in {spec.name}; rows: "
                    f"{sorted({f'{r.method}:{r.epochs}' for r in paper})}"
                )
            ref = cand[0]
        elif spec.factor:  # an ablation: the paper's row of the same value
            same = [r for r in paper if r.method == row.method]
            if not same:
                continue
            ref = same[0]
        else:
            care = [r for r in paper if r.method == "CARE" and r.epochs]
            same_arch = [r for r in care if r.arch and r.arch.replace("(2x)", " x2") == row.arch]
            care = same_arch or care
            if not care:
                continue
            try:
                target = float(row.epochs)
            except ValueError:
                target = math.inf
            ref = min(care, key=lambda r: (abs(float(r.epochs) - target), float(r.epochs)))
        row.delta_ref = f"{ref.method} {ref.epochs}ep ({ref.source})"
        for c in spec.columns:
            ours, theirs = row.mean(c.key), ref.mean(c.key)
            if ours is not None and theirs is not None:
                row.delta[c.key] = ours - theirs


def add_means(spec: TableSpec, rows: list[Row]) -> None:
    """The mean column of each row: the mean of its other columns' means, when every one
    of them has a value (a paper row keeps its own figure when it reports one)."""
    keys = [c.key for c in spec.columns if c.key != spec.mean_column]
    for row in rows:
        if row.cells.get(spec.mean_column) is not None:
            continue
        values = [row.mean(k) for k in keys]
        if all(v is not None for v in values):
            row.cells[spec.mean_column] = sum(values) / len(values)


def add_significance(spec: TableSpec, rows: list[Row], a: str, b: str) -> None:
    """Welch's t-test per column between our rows with weights ``a`` and ``b`` (p on b's
    row), separately for real-data and synthetic rows."""
    ours = {(r.weights, r.synthetic): r for r in rows if r.kind == "ours"}
    for synthetic in (False, True):
        ra, rb = ours.get((a, synthetic)), ours.get((b, synthetic))
        if ra is None or rb is None:
            continue
        rb.p_vs = ra.label
        for c in spec.columns:
            sa, sb = ra.cells.get(c.key), rb.cells.get(c.key)
            if isinstance(sa, Stat) and isinstance(sb, Stat):
                rb.pvalues[c.key] = welch(sa, sb)


def build_table(
    spec: TableSpec,
    groups: list[Group],
    labels: dict[str, tuple[str, str]],
    source: str | None = None,
    reference: str | None = None,
    compare: tuple[str, ...] | None = None,
    with_paper: bool = True,
) -> list[Row]:
    """The paper's rows and ours; ``compare``: Welch's p of each later weights' row against
    the first's."""
    rows = (read_reference(spec, source) if with_paper else []) + our_rows(spec, groups, labels)
    if spec.mean_column:
        add_means(spec, rows)
    add_deltas(spec, rows, reference)
    if compare:
        for other in compare[1:]:
            add_significance(spec, rows, compare[0], other)
    return rows
