"""report.html: self-contained, every table's numbers on it, links that resolve, and the
page as a real browser (Debian's chromium through playwright) renders it."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

from tables import __main__ as cli

sys.path.insert(0, str(Path(__file__).parent))
from test_tables import _our_runs  # noqa: E402


def make_report(root: Path) -> dict[str, Path]:
    """The tables' fixture runs, one unfinished and one failed seed, an environment record."""
    runs = root / "runs"
    _our_runs(runs)
    (runs / "voc_c4_24k/byol_r50/seed7").mkdir()
    failed = runs / "voc_c4_24k/byol_r50/seed8"
    failed.mkdir()
    (failed / "failed.json").write_text(json.dumps({"error": "loss is NaN at iteration 12"}))
    env = {"python": "3.11.7", "torch": "2.14.1", "cpu_threads": 2}
    (runs / "voc_c4_24k/care_r50/seed0/environment.json").write_text(json.dumps(env))
    fig = root / "maps.png"
    from PIL import Image

    Image.new("RGB", (320, 200), (200, 40, 40)).save(fig)
    argv = ["--runs", str(runs), "--out", str(root / "tables"), "--html", "--compare",
            "byol_r50", "care_r50", "--figure", str(fig)]  # fmt: skip
    return cli.main(cli.get_args_parser().parse_args(argv))


def expected_numbers(csv_path: Path) -> list[str]:
    """'mean ± std' of each of our cells, as the tables print them at one decimal."""
    out = []
    for r in csv.DictReader(open(csv_path)):
        if r["kind"] != "ours":
            continue
        for key in ("voc_AP", "coco_det_AP"):
            if r[key]:
                out.append(f"{float(r[key]):.1f} ± {float(r[key + '_std']):.1f}")
    return out


def test_report_is_self_contained_with_every_table_failure_and_link(tmp_path):
    written = make_report(tmp_path)
    page = written["report.html"].read_text()
    assert not re.search(r'<(img|script|link)[^>]+(src|href)="(https?:|//)', page)
    pngs = [n for n in written if n.endswith(".png")]
    # every table plot and the extra figure, embedded
    assert page.count('src="data:image/png;base64,') == len(pngs) + 1
    for number in expected_numbers(written["table4.csv"]):
        assert number in page
    assert "FAILED voc_c4_24k/byol_r50/seed8: loss is NaN at iteration 12" in page
    assert "unfinished voc_c4_24k/byol_r50/seed7" in page
    assert "BYOL (byol_r50) has no finished seed of coco_c4_1x" in page
    assert "&quot;torch&quot;: &quot;2.14.1&quot;" in page  # the environment record
    base = written["report.html"].parent
    links = re.findall(r'<a href="([^"#]+)"', page)
    # config + metrics of 17 seeds, failed.json, environment.json, the three table files
    assert len(links) == 17 * 2 + 1 + 1 + 3
    for href in links:
        assert (base / href).exists(), href


def test_report_renders_in_a_real_browser(tmp_path, render_html):
    written = make_report(tmp_path)
    shot = tmp_path / "report.png"
    page = render_html(written["report.html"], shot)
    assert page["broken"] == 0 and page["images"] == sum(n.endswith(".png") for n in written) + 1
    for number in expected_numbers(written["table4.csv"]):
        assert number in page["text"]
    assert "FAILED voc_c4_24k/byol_r50/seed8" in page["text"]
    # the best two per column, rendered bold
    assert len(page["bold_best"]) > 10 and all(int(w) >= 700 for w in page["bold_best"])
    assert shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")
