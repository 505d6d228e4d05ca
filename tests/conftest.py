"""Shared fixtures: one synthetic shapes tree per test session (a few seconds to write)."""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated")


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    from synthetic import ShapesSpec, generate

    return generate(tmp_path_factory.mktemp("shapes"), ShapesSpec(seed=0))


@pytest.fixture(scope="session")
def registered_shapes(shapes_root):
    from transfer.datasets import register_shapes

    register_shapes(shapes_root)
    return shapes_root
