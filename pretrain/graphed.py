"""The CUDA-graph training step (``--cuda-graph``, ours): the forward and backward of a batch
are captured once as one CUDA graph and replayed at every step, so the host issues one
launch where the eager step issues thousands (the eager CARE step is bound by the host on
an H100 / H200: ~2350 kernel launches per step).

Only the forward and backward are captured. The optimiser step (foreach SGD) and the EMA
update stay eager: a few dozen launches, with the scheduled lr and momentum as Python
numbers, exactly as in the eager step, so checkpoints, resume and schedules are unchanged.
The gradients live in the graph's memory and are overwritten by each replay (never zeroed
or freed). Capture needs a few warm-up passes (cuDNN's algorithm search, lazy
initialisation); they run on the first batch and every buffer they change (BatchNorm
running statistics, ``num_batches_tracked``) is restored afterwards, so the run's numbers
do not depend on the warm-up.

Limits: one process (no DDP), a fixed batch shape (another shape, e.g. a short last batch,
takes the eager step), a method whose forward draws no random numbers on the host
(``Method.graph_safe``: CARE, BYOL, SimSiam; the GSG pairing and MaskCo's boxes are drawn
inside the forward), and no ``--online-probe`` (its hook reads the features on the host).
"""

from __future__ import annotations

import torch

from pretrain.amp import AmpStep


def graph_unsupported(method_cls, cuda: bool, world: int, probe: bool) -> str | None:
    """Why ``--cuda-graph`` cannot apply to a run (a one-line reason), or None."""
    if not cuda:
        return "it needs CUDA"
    if world > 1:
        return "it runs one process only (DDP's gradient hooks are not captured)"
    if not getattr(method_cls, "graph_safe", False):
        return f"{method_cls.__name__}'s forward draws random numbers on the host"
    if probe:
        return "--online-probe reads each step's features on the host"
    return None


class GraphedForwardBackward:
    """``losses = g(views, *extra)``: forward + (scaled) backward of ``module`` by replaying
    one captured CUDA graph; returns None (do the eager step) for a batch whose shapes
    differ from the captured ones. Views: (N, 3, S, S) CUDA tensors in the model's memory
    format; the returned dict's tensors are static (overwritten by the next call)."""

    def __init__(self, module: torch.nn.Module, amp: AmpStep, warmup: int = 3):
        self.module, self.amp, self.warmup = module, amp, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.grads: list[tuple[torch.Tensor, torch.Tensor]] = []  # (param, its graph gradient)
        self.outputs: dict[str, torch.Tensor] = {}

    def __call__(self, views: list[torch.Tensor], *extra: torch.Tensor):
        batch = [*views, *extra]
        if self.graph is None:
            self._capture(batch, len(views))
        elif [t.shape for t in batch] != [t.shape for t in self.inputs]:
            return None
        for static, t in zip(self.inputs, batch):
            static.copy_(t, non_blocking=True)
        for p, g in self.grads:  # an eager step in between sets them to None
            p.grad = g
        self.graph.replay()
        return self.outputs

    def _pass(self, n_views: int) -> dict[str, torch.Tensor]:
        views, extra = self.inputs[:n_views], self.inputs[n_views:]
        with self.amp.autocast(cache_enabled=False):  # a graph cannot use autocast's cache
            losses = self.module(views, *extra)
        self.amp.scaler.scale(losses["loss"]).backward()
        return losses

    def _capture(self, batch: list[torch.Tensor], n_views: int) -> None:
        params = [p for p in self.module.parameters() if p.requires_grad]
        saved = [b.detach().clone() for b in self.module.buffers()]
        self.inputs = [t.detach().clone() for t in batch]  # clone keeps the memory format
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                for p in params:
                    p.grad = None
                self._pass(n_views)
        torch.cuda.current_stream().wait_stream(side)
        for p in params:  # backward allocates the gradients inside the graph's memory
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self._pass(n_views)
        with torch.no_grad():  # undo the warm-up's BatchNorm statistics
            for b, s in zip(self.module.buffers(), saved):
                b.copy_(s)
        self.grads = [(p, p.grad) for p in params if p.grad is not None]
        self.graph = graph
