"""Shared fixtures: one synthetic shapes tree per test session (a few seconds to write)."""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated")


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


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    from synthetic import ShapesSpec, generate

    return generate(tmp_path_factory.mktemp("shapes"), ShapesSpec(seed=0))


@pytest.fixture(scope="session")
def registered_shapes(shapes_root):
    from transfer.detection.datasets import register_shapes

    register_shapes(shapes_root)
    return shapes_root
