"""Shared fixtures: one synthetic shapes tree per test session (a few seconds to write)."""

from __future__ import annotations

import os
import warnings

import pytest

warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated")

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of `make test`'s parallel workers: one
    # thread each (and in the processes a test starts), not every core per worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_addoption(parser):
    parser.addoption(
        "--extended",
        action="store_true",
        help="also run the tests marked extended (make test-extended)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--extended"):
        return
    skip = pytest.mark.skip(reason="extended check: run with --extended (make test-extended)")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def float64():
    """torch's default dtype float64 for one test: an equivalence of two computations is
    checked on its formulas, not on the CPU's float32 kernels (which differ between CPUs)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    from synthetic import ShapesSpec, generate

    return generate(tmp_path_factory.mktemp("shapes"), ShapesSpec(seed=0))


@pytest.fixture(scope="session")
def registered_shapes(shapes_root):
    from transfer.detection.datasets import register_shapes

    register_shapes(shapes_root)
    return shapes_root


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture
def render_html():
    """``render(html_path, screenshot_path) -> dict``: the page as headless chromium (Debian's,
    driven by playwright) renders it: ``text`` (the body's rendered text), ``images``,
    ``broken`` (images not loaded), ``bold_best`` (font weights of ``td.best`` cells); the
    full-page screenshot is written. Skipped without a browser, unless REQUIRE_BROWSER is
    set (CI), where a missing one fails."""
    import os
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if os.environ.get("REQUIRE_BROWSER"):
        import playwright.sync_api as pw

        assert chromium, "REQUIRE_BROWSER is set but there is no chromium on PATH"
    else:
        if not chromium:
            pytest.skip("no chromium (apt-get install chromium; .ci/run installs it)")
        pw = pytest.importorskip("playwright.sync_api")

    def render(path, screenshot):
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(path.resolve().as_uri())
                out = {
                    "broken": page.evaluate(
                        "[...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                        ".length"
                    ),
                    "images": page.evaluate("document.images.length"),
                    "text": page.inner_text("body"),
                    "bold_best": page.eval_on_selector_all(
                        "td.best", "els => els.map(e => getComputedStyle(e).fontWeight)"
                    ),
                }
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()
        return out

    return render


@pytest.fixture
def free_port() -> int:
    """A TCP port the OS has just handed out (then released) for a test's process group:
    tests run in parallel (``make test``: two workers) and must not share one."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A randomly initialised torchvision ResNet-50 state dict (seed 0): tv_r50.pth."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tv_r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path
