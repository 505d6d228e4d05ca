"""``--cuda-graph`` (pretrain/graphed.py): the replayed forward + backward gives the eager
step's losses and parameters, survives eager steps in between, and resumes exactly.

Tolerances (stated): with cuDNN's deterministic algorithms, fp32 steps agree to 1e-5
(absolute, on parameters of magnitude <= ~1) and 1e-5 relative on the losses (on an H200
they were bit-identical over five steps). Under bf16 autocast the graph casts each weight
at each use (autocast's cast cache cannot be captured), so a weight used by both views
gets its two gradients summed in fp32 where the eager step sums them in bf16: one bf16 ulp
(~4e-3 relative) per sum. The first step is compared (loss 2e-3 relative, the whole
gradient 2e-2 in relative norm); over further steps such differences grow as any
perturbation does on random data (on the CPU, autocast's cache on vs off moved BYOL's
parameters by up to 0.04 in five steps, a 1e-3 input perturbation by 0.12), so the later
losses are held to 2e-2 relative + 1e-3 and the parameters are not compared.
The CPU tests check the refusals."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.cli import ConfigError, Interrupted
from pretrain.graphed import graph_unsupported
from pretrain.methods import method_class
from pretrain.recipes import recipe_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    "method,cuda_ok,world,probe,why",
    [
        ("care", False, 1, False, "needs CUDA"),
        ("byol", True, 2, False, "one process"),
        ("simsiam_gsg", True, 1, False, "random numbers on the host"),
        ("byol_gsg", True, 1, False, "random numbers on the host"),
        ("maskco", True, 1, False, "random numbers on the host"),
        ("simsiam", True, 1, True, "--online-probe"),
    ],
)
def test_graph_unsupported_names_the_reason(method, cuda_ok, world, probe, why):
    assert why in graph_unsupported(method_class(method), cuda_ok, world, probe)


@pytest.mark.parametrize("method", ["care", "byol", "simsiam", "byol_gsgpaper"])
def test_graph_safe_methods_are_accepted(method):
    assert graph_unsupported(method_class(method), True, 1, False) is None


def test_cuda_graph_on_without_cuda_is_a_one_line_error(tmp_path, shapes_root):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    from pretrain.trainer import Trainer

    cfg = recipe_config("test", method="byol", data=str(shapes_root / "imagefolder"),
                        output=str(tmp_path), knn_every=0, cuda_graph="on")  # fmt: skip
    with pytest.raises(ConfigError, match="--cuda-graph on: it needs CUDA; use --cuda-graph off"):
        Trainer(cfg)
    t = Trainer(replace(cfg, cuda_graph="auto"))  # auto: eager where it does not apply
    assert t.graphed is None


@contextlib.contextmanager
def deterministic():
    old = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old


def _pair(method: str, dtype):
    """Two identical (model, AmpStep) pairs, channels_last, on CUDA."""
    from pretrain.amp import AmpStep
    from pretrain.config import PretrainConfig
    from pretrain.methods import build_method

    out = []
    heads = PretrainConfig(method=method, arch="resnet18").options
    for _ in range(2):
        torch.manual_seed(0)
        m = build_method(method, "resnet18", heads).cuda().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(m.param_groups(), lr=0.05, momentum=0.9, weight_decay=1e-4,
                              foreach=True)  # fmt: skip
        out.append((m, AmpStep(opt, dtype, "cuda")))
    return out


def _batches(n_steps: int, n: int = 16, size: int = 64):
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(n, 3, size, size, generator=g).cuda().to(memory_format=torch.channels_last)
             for _ in range(2)] for _ in range(n_steps)]  # fmt: skip


def _step(model, amp, graphed, views, lr, tau):
    """One step, eager (``graphed`` None or another shape) or replayed: the loss dict."""
    for group in amp.optimizer.param_groups:
        group["lr"] = lr
    got = graphed(views) if graphed is not None else None
    if got is None:
        with amp.autocast():
            got = model(views)
        amp.step(got["loss"])
    else:
        amp.apply()
    model.update_target(tau)
    return got


@cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("method", ["care", "byol", "simsiam"])
def test_graph_step_matches_the_eager_step(method, dtype):
    """Five steps with a changing lr and EMA momentum; the third batch is shorter (the eager
    fallback inside a graphed run), and the graph's gradients are used again after it."""
    from pretrain.graphed import GraphedForwardBackward

    (eager, e_amp), (graphed_model, g_amp) = _pair(method, dtype)
    graphed = GraphedForwardBackward(graphed_model, g_amp)
    batches = _batches(5)
    batches[2] = [v[:12] for v in batches[2]]
    fp32 = dtype is None
    with deterministic():
        for i, views in enumerate(batches):
            lr, tau = 0.05 * (1 - i / 10), 0.99 + 0.001 * i
            a = _step(eager, e_amp, None, views, lr, tau)["loss"].item()
            b = _step(graphed_model, g_amp, graphed, views, lr, tau)["loss"].item()
            p0, g0 = graphed.grads[0]  # the graph's gradient is the parameter's, but after
            assert (p0.grad is g0) == (i != 2)  # the eager fallback (fresh ones, step 2)
            if i == 0 and not fp32:  # the same weights: the gradients of one step
                ge = torch.cat([p.grad.flatten() for p in eager.online_parameters()
                                if p.grad is not None])  # fmt: skip
                gg = torch.cat([p.grad.flatten() for p in graphed_model.online_parameters()
                                if p.grad is not None])  # fmt: skip
                assert ge.shape == gg.shape
                assert (ge - gg).norm() <= 2e-2 * ge.norm(), ((ge - gg).norm(), ge.norm())
            rel, eps = (1e-5, 1e-6) if fp32 else ((2e-3, 1e-6) if i == 0 else (2e-2, 1e-3))
            assert abs(a - b) <= rel * abs(a) + eps, (i, a, b)
    if fp32:
        worst = max((p - q).abs().max().item() for p, q in
                    zip(eager.state_dict().values(), graphed_model.state_dict().values())
                    if p.is_floating_point())  # fmt: skip
        print(f"{method} fp32: max |param eager - graph| after 5 steps = {worst:.3g}")
        assert worst <= 1e-5


@cuda
def test_a_graphed_run_matches_an_eager_run_and_resumes_exactly(tmp_path, shapes_root):
    """The Trainer with ``--cuda-graph on`` against ``off`` in fp32 (same data order): the
    same weights to 1e-5; and a bf16 graphed run stopped at step 2 then resumed (a new
    capture) against the straight one: bit-identical."""
    from pretrain.trainer import Trainer

    data = str(shapes_root / "imagefolder")
    cfg = recipe_config("test", method="care", data=data, output=str(tmp_path / "a"),
                        knn_every=0, workers=0, batch_aug="off", amp="bf16",
                        stop_after_steps=4, cuda_graph="on")  # fmt: skip

    def fit(c: object, resume: bool = False) -> Trainer:
        t = Trainer(c)
        if resume:
            t.load(Path(c.output) / "checkpoint.pth")
        with pytest.raises(Interrupted):
            t.fit()
        return t

    with deterministic():
        straight = fit(cfg)
        fit(replace(cfg, output=str(tmp_path / "b"), stop_after_steps=2))
        resumed = fit(replace(cfg, output=str(tmp_path / "b")), resume=True)
        graph32 = fit(replace(cfg, output=str(tmp_path / "g32"), amp="none"))
        eager32 = fit(replace(cfg, output=str(tmp_path / "e32"), amp="none", cuda_graph="off"))
    assert straight.graphed is not None and straight.graphed.graph is not None
    assert eager32.graphed is None
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    g, e = graph32.model.state_dict(), eager32.model.state_dict()
    for k in g:
        if g[k].is_floating_point():
            assert (g[k] - e[k]).abs().max() <= 1e-5, k
        else:
            assert torch.equal(g[k], e[k]), k
    lg = [h["loss"] for h in graph32.history if h.get("type") == "step"]
    le = [h["loss"] for h in eager32.history if h.get("type") == "step"]
    assert len(lg) == 4 and lg == pytest.approx(le, rel=1e-5)
