"""The demo pipeline at its smallest size: every artefact exists and holds numbers."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))


def _check_quick_suite(out):
    """care-bench's quick suite on the two R50s (the demo's step 3-4)."""
    # one finished seed per (weights, protocol), with finite
    # headline APs (a per-category AP is NaN, as in COCOeval, when an image set holds no such
    # object), kNN and many-shot linear of the R50s too
    for protocol in ("voc_c4_24k_smoke", "coco_fpn_1x_smoke"):
        for weights in ("care_r50", "byol_r50"):
            m = json.loads(
                (out / "runs" / protocol / weights / "seed0" / "metrics.json").read_text()
            )
            assert all(math.isfinite(m["bbox"][k]) for k in ("AP", "AP50", "AP75"))
    # ADE20K UPerNet on the synthetic twin, and GSG's Figure 2 layout of its predictions
    for weights in ("care_r50", "byol_r50"):
        m = json.loads((out / "runs" / "ade20k_upernet_smoke" / weights / "seed0" /
                        "metrics.json").read_text())  # fmt: skip
        assert 0 <= m["headline"]["mIoU"] <= 100 and 0 <= m["headline"]["pixel_acc"] <= 100
    for weights in ("care_r50", "byol_r50"):
        assert (out / "runs" / "knn_smoke" / weights / "seed0" / "metrics.json").exists()
        for task in ("dtd", "pets"):
            assert (out / "runs" / "manyshot_linear_smoke" / weights / task / "seed0" /
                    "metrics.json").exists()  # fmt: skip


# The whole pipeline, about 4 minutes on 2 cores: in `make test-extended` (CI time); every
# step is also covered on its own in `make test`.
@pytest.mark.slow
@pytest.mark.extended
def test_tiny_demo_produces_every_artefact(tmp_path, render_html):
    import demo
    from PIL import Image

    out = tmp_path / "demo"
    written = demo.main(demo.get_args_parser().parse_args(["--out", str(out), "--tiny"]))
    # pretraining checkpoints in the documented format, with finite kNN metrics
    for method in ("care", "byol"):
        metrics = [
            json.loads(x)
            for x in (out / "pretrain" / method / "metrics.jsonl").read_text().splitlines()
        ]
        knn = [m["knn/top1_k20"] for m in metrics if "knn/top1_k20" in m]
        assert knn and all(0 <= v <= 100 for v in knn)
        assert (out / "weights" / f"{method}_r50.pth").stat().st_size > 1e6
    _check_quick_suite(out)
    assert "segmentation_figure.png" in written and "segmentation.md" in written
    # the classification step: linear and kNN probes of CARE (ResNet-18) and a random one
    for protocol, key in (("linear_care_smoke", "top1"), ("knn_smoke", "k20_top1")):
        for weights in ("care_r18", "random_init_r18"):
            m = json.loads(
                (out / "runs" / protocol / weights / "seed0" / "metrics.json").read_text()
            )
            assert 0 <= m["cls"][key] <= 100 and m["arch"] == "ResNet-18"
    # many-shot linear recognition transfer of both on two synthetic twins
    for task in ("cifar10", "dtd"):
        for weights in ("care_r18", "random_init_r18"):
            m = json.loads(
                (out / "runs" / "manyshot_linear_smoke" / weights / task / "seed0" /
                 "metrics.json").read_text()
            )  # fmt: skip
            assert 0 <= m["test"] <= 100 and m["best_C"] > 0
    assert "CARE (care_r18) (synthetic)" in written["manyshot.md"].read_text()
    summary = written["classification.md"].read_text()
    assert "CARE (care_r18) (synthetic)" in summary and "Rand Init (random_init_r18)" in summary
    # the tables parse and carry our two rows beside the paper's
    rows = list(csv.DictReader(open(written["table4.csv"])))
    ours = {r["weights"] for r in rows if r["kind"] == "ours"}
    assert ours == {"care_r50", "byol_r50"}
    assert all(math.isfinite(float(r["voc_AP"])) for r in rows if r["kind"] == "ours")
    assert "CARE (care_r50) (synthetic)" in written["table4.md"].read_text()
    assert "comparison.csv" in written
    assert r"\begin{tabular}" in written["table4.tex"].read_text()
    for name, path in written.items():
        if name.endswith(".png"):
            with Image.open(path) as im:
                assert im.size[0] > 100
    assert "attention_maps.png" in written
    with Image.open(written["tsne.png"]) as im:  # three panels: CARE r18, CARE and BYOL r50
        assert im.size[0] > 2.5 * im.size[1]
    # the report, as a browser renders it: every plot and the maps, the tables' rows
    page = render_html(written["report.html"], tmp_path / "report.png")
    assert page["broken"] == 0 and page["images"] >= 5
    for label in ("CARE (care_r18) (synthetic)", "Rand Init (random_init_r18) (synthetic)",
                  "Comparison of the checkpoints"):  # fmt: skip
        assert label in page["text"]
    # re-running reuses everything: nothing is trained again
    again = demo.main(demo.get_args_parser().parse_args(["--out", str(out), "--tiny"]))
    assert again.keys() == written.keys()
