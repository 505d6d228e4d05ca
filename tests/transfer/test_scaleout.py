"""Several processes equal one: a training step of each detectron2 family on 2 CPU processes
(gloo, started by ``common.processes.start_workers`` as the runners start them) with B/2
images each equals one process with the B images: the losses, every gradient and the
synchronised norms' running statistics. float64, so the tolerances are float64's (the
all-reduce sums in another order than one process does).

What is held fixed so that the process count is the only difference (docs/scaling.md):
every image has the same size (a process pads its images to its own largest), one box per
image and sampling that takes every anchor and every proposal (detectron2 samples with
``randperm`` from each process's own generator; a per-process mean over unequal counts is
not the whole batch's mean), and, for segmentation, labels without ignored pixels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.processes import start_workers

TAKE_ALL = [
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "100000", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "100000",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "24", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100000",
]  # fmt: skip
FAMILIES = {
    # family: (protocol, overrides); MoCo's C4 norm is detectron2's NaiveSyncBatchNorm (all-
    # reduce based, runs on gloo as it is); the FPN's SyncBN becomes GlobalBatchNorm on CPU
    "voc_c4": ("detection", "voc_c4_24k", TAKE_ALL),
    "coco_fpn": ("detection", "coco_fpn_1x", [*TAKE_ALL, "MODEL.MASK_ON", "False"]),
    "ade20k": ("segmentation", "ade20k_upernet", ["MODEL.UPERNET.BN_MOMENTUM", "0.1"]),
}


def _inputs(family: str, n: int = 4, side: int = 96) -> list[dict]:
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        image = torch.randint(0, 256, (3, side, side), generator=g, dtype=torch.uint8)
        if family == "segmentation":
            label = torch.randint(0, 150, (side // 4, side // 4), generator=g)
            out.append({"image": image, "sem_seg": label})
            continue
        x0, y0 = torch.randint(0, side // 2, (2,), generator=g).tolist()
        inst = Instances((side, side))
        inst.gt_boxes = Boxes(torch.tensor([[x0, y0, x0 + 40.0, y0 + 36.0]], dtype=torch.float64))
        inst.gt_classes = torch.randint(0, 6, (1,), generator=g)  # the smoke config: 6
        out.append({"image": image, "instances": inst, "height": side, "width": side})
    return out


def _model(family: str, protocol: str, opts: list[str]):
    """The seed trainer's model (its CPU norm conversion) in float64, DDP-wrapped as
    ``DefaultTrainer`` wraps it (one process: the model itself)."""
    from detectron2.engine import defaults

    from transfer.d2engine import SeedTrainer, ddp_without_device_ids

    if family == "detection":
        from transfer.detection.config import build_config
    else:
        from transfer.segmentation.config import build_config
    cfg = build_config(protocol, smoke=True, weights="", opts=opts, device="cpu")
    torch.manual_seed(0)
    model = SeedTrainer.build_model(cfg).double()
    with ddp_without_device_ids(True):
        return model, defaults.create_ddp_model(model, broadcast_buffers=False)


def _nms_of_float64_scores() -> None:
    """detectron2 casts the proposals' boxes to float32 for torchvision's NMS, which then
    needs float32 scores too: they are cast alike (NMS only picks the indices kept)."""
    from detectron2.modeling.proposal_generator import proposal_utils

    nms = proposal_utils.batched_nms
    if not getattr(nms, "float64_scores", False):
        proposal_utils.batched_nms = lambda b, s, i, t: nms(b, s.float(), i, t)
        proposal_utils.batched_nms.float64_scores = True


def one_step(family: str, protocol: str, opts: list[str], inputs: list[dict], out: str | None):
    """One forward / backward of this process's share of ``inputs``; the losses averaged
    over the processes, every gradient and norm buffer -> ``out`` (rank 0) or returned."""
    import torch.distributed as dist
    from detectron2.utils import comm
    from detectron2.utils.events import EventStorage

    torch.set_default_dtype(torch.float64)
    _nms_of_float64_scores()
    model, ddp = _model(family, protocol, opts)
    world, rank = comm.get_world_size(), comm.get_rank()
    share = len(inputs) // world
    with EventStorage(0):
        losses = ddp(inputs[rank * share : (rank + 1) * share])
    sum(losses.values()).backward()
    values = torch.stack([losses[k].detach() for k in sorted(losses)])
    if world > 1:
        dist.all_reduce(values)
        values /= world
    norms = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
    record = {
        "losses": dict(zip(sorted(losses), values.tolist())),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        "buffers": {n: b.clone() for n, b in model.named_buffers() if "running" in n},
        "norms": sorted(norms),
    }
    if out is None:
        return record
    if rank == 0:
        torch.save(record, out)
    return None


def largest_differences(one: dict, two: dict, buffers: list[str]) -> str:
    """The largest difference per quantity: losses (relative), gradients and running
    statistics (relative to each tensor's largest magnitude)."""

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()

    loss = max(abs(two["losses"][k] - v) / abs(v) for k, v in one["losses"].items())
    grad = max(rel(two["grads"][n], g) for n, g in one["grads"].items())
    stat = max(rel(two["buffers"][n], one["buffers"][n]) for n in buffers)
    return f"loss {loss:.1e}, gradient {grad:.1e}, running statistics {stat:.1e}"


@pytest.mark.extended  # make test-extended: up to a minute each on 2 cores
@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_step_on_two_processes_equals_one_process_on_the_whole_batch(name, tmp_path, float64):
    family, protocol, opts = FAMILIES[name]
    inputs = _inputs(family)
    start_workers(one_step, (family, protocol, opts, inputs, str(tmp_path / "two.pt")), 2)
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    one = one_step(family, protocol, opts, inputs, None)

    # detectron2's RPN objectness loss is float32 whatever the model's dtype (it casts its
    # targets to float32): that loss and every gradient it reaches carry float32 rounding
    # (eps 1.2e-7; 1e-6 allows the sums' growth); the rest is float64
    rel = 1e-6 if family == "detection" else 1e-9
    assert two["losses"].keys() == one["losses"].keys()
    for k, v in one["losses"].items():
        tol = 1e-6 if k == "loss_rpn_cls" else 1e-9
        assert two["losses"][k] == pytest.approx(v, rel=tol, abs=1e-12), k
    if name == "coco_fpn":  # the CPU processes' SyncBN: global-batch statistics over gloo
        assert "GlobalBatchNorm" in two["norms"] and "SyncBatchNorm" not in two["norms"]
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 100
    for n, g in one["grads"].items():
        scale = g.abs().max().item()
        torch.testing.assert_close(two["grads"][n], g, rtol=rel, atol=rel * scale, msg=n)
    running = [n for n in one["buffers"] if "running_mean" in n or name != "voc_c4"]
    assert len(running) > 20
    print(name, largest_differences(one, two, running))
    # detectron2's NaiveSyncBatchNorm (C4) updates running_var with the biased variance on
    # several processes, BatchNorm2d with the unbiased one on one process: means compared
    for n in running:
        torch.testing.assert_close(two["buffers"][n], one["buffers"][n], rtol=1e-9, atol=1e-12)


class Oracle(torch.nn.Module):
    """A stand-in detector / segmentor whose predictions come from each image's annotations,
    imperfect in a fixed way (shifted boxes, one class in three wrong, one false positive per
    image; a wrong stripe of labels): an evaluation result between 0 and 100 that depends
    on every image, so a lost or doubled image on either rank changes it."""

    def __init__(self, dataset: str):
        super().__init__()
        from detectron2.data import DatasetCatalog

        self.records = {d["file_name"]: d for d in DatasetCatalog.get(dataset)}
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for detectron2's helpers

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        return [self.predict(self.records[x["file_name"]], x) for x in batched_inputs]

    def predict(self, record: dict, x: dict) -> dict:
        import numpy as np
        from detectron2.structures import Boxes, BoxMode, Instances
        from PIL import Image

        h, w = int(x["height"]), int(x["width"])
        if "sem_seg_file_name" in record:
            label = torch.from_numpy(np.array(Image.open(record["sem_seg_file_name"]))).long()
            label[label == 255] = 0
            label[: h // 3] = (label[: h // 3] + 1) % 150
            return {"sem_seg": torch.nn.functional.one_hot(label, 150).permute(2, 0, 1).float()}
        boxes, classes, scores = [], [], []
        for k, a in enumerate(record["annotations"]):
            b = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
            boxes.append([v + (k % 4) for v in b])
            classes.append(a["category_id"] if k % 3 else (a["category_id"] + 1) % 6)
            scores.append(0.9 - 0.1 * (k % 5))
        boxes.append([0.0, 0.0, w / 3, h / 3])
        classes.append(record["image_id"] % 6 if isinstance(record["image_id"], int) else 0)
        scores.append(0.55)
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(boxes).clamp(min=0))
        inst.pred_classes = torch.tensor(classes)
        inst.scores = torch.tensor(scores)
        masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(inst.pred_boxes.tensor.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.pred_masks = masks
        return {"instances": inst}


EVALUATIONS = {
    "voc": ("detection", "voc_c4_24k"),
    "coco": ("detection", "coco_fpn_1x"),
    "ade20k": ("segmentation", "ade20k_upernet"),
}


def evaluate(family: str, protocol: str, root: str, out: str | None):
    """The seed trainer's final evaluation (``DefaultTrainer.test``: the sharded test
    loader, the evaluator, its gather to rank 0) of the oracle; rank 0's results."""
    from detectron2.utils import comm

    if family == "detection":
        from transfer.detection.config import build_config
        from transfer.detection.datasets import register_shapes
        from transfer.detection.trainer import SuiteTrainer as Trainer

        register_shapes(root)
    else:
        from transfer.segmentation.config import build_config
        from transfer.segmentation.data import register
        from transfer.segmentation.trainer import SegTrainer as Trainer

        register(root, synthetic=True)
    cfg = build_config(protocol, smoke=True, weights="", device="cpu", opts=["OUTPUT_DIR", out])
    results = Trainer.test(cfg, Oracle(cfg.DATASETS.TEST[0]))
    if comm.is_main_process():
        torch.save({k: dict(v) for k, v in results.items()}, f"{out}/results.pt")


@pytest.mark.parametrize("name", list(EVALUATIONS))
def test_an_evaluation_over_two_ranks_equals_one_process(name, shapes_root, tmp_path):
    """VOC AP, COCO box and mask AP, ADE20K mIoU: the test images sharded over 2 ranks and
    gathered to rank 0 give one process's numbers (float64 sums; the same per-image
    predictions on both sides)."""
    family, protocol = EVALUATIONS[name]
    root = str(shapes_root)
    if family == "segmentation":
        from synthetic.ade20k import write_ade20k
        from transfer.segmentation.data import prepare

        root = str(write_ade20k(tmp_path / "ade"))
        prepare(root)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    start_workers(evaluate, (family, protocol, root, str(tmp_path / "two")), 2)
    start_workers(evaluate, (family, protocol, root, str(tmp_path / "one")), 1)
    one = torch.load(tmp_path / "one" / "results.pt", weights_only=False)
    two = torch.load(tmp_path / "two" / "results.pt", weights_only=False)
    print(
        name,
        {task: {k: round(v, 2) for k, v in r.items() if "-" not in k} for task, r in one.items()},
    )
    assert one.keys() == two.keys() and one
    for task, r in one.items():
        headline = r.get("AP", r.get("mIoU"))
        assert 5 < headline < 95, (task, headline)  # a result that every image moves
        assert two[task] == pytest.approx(r, rel=1e-12, abs=1e-12, nan_ok=True), task


def top1(data: str, seed_dir: str, out: str | None):
    """Classification's evaluation (``train.evaluate``: every world-th val image per rank,
    the counts all-reduced) of a fixed random ResNet-18 + linear head."""
    from detectron2.utils import comm

    from transfer.classification.train import Probe, Run, build_head, evaluate
    from transfer.spec import SeedSpec

    spec = SeedSpec(protocol="linear_care", protocol_name="linear_care_smoke", smoke=True,
                    dataset="synthetic", shapes_root=None, weights="", weights_info={},
                    seed_index=0, seed=1000, seed_dir=seed_dir, data=data, arch="resnet18",
                    family="classification")  # fmt: skip
    torch.manual_seed(0)
    run = Run(spec)
    probe = Probe(run.backbone, build_head(run), run.p.stages, frozen=True)
    result = evaluate(run, probe)
    if comm.is_main_process():
        torch.save(result, out)


def test_classification_top1_over_two_ranks_equals_one_process(shapes_root, tmp_path):
    data = str(shapes_root / "imagefolder")
    start_workers(top1, (data, str(tmp_path / "s2"), str(tmp_path / "two.pt")), 2)
    start_workers(top1, (data, str(tmp_path / "s1"), str(tmp_path / "one.pt")), 1)
    one, two = (torch.load(tmp_path / f"{n}.pt") for n in ("one", "two"))
    print("top-1", one)
    assert one["val_images"] == two["val_images"] == 6 * 8
    assert 0 < one["top1"] < 100 and two == one


RECOGNITION = {
    # protocol: overrides (a 2-run grid: one run per process)
    "manyshot_finetune": ["grid_size", "1", "lr_lo", "-1", "image_size", "32"],
    "manyshot_linear": ["image_size", "32"],
    "fewshot": ["image_size", "32"],
}


def recognition_seed(protocol: str, data: str, folder: str, cache: str, task: str) -> None:
    """One recognition seed (its entry point), one thread per process on both sides."""
    from transfer.recognition.run import run_recognition_seed
    from transfer.spec import SeedSpec

    torch.set_num_threads(1)
    spec = SeedSpec(protocol=protocol, protocol_name=f"{protocol}_smoke", smoke=True,
                    dataset="synthetic", shapes_root=None, weights="",
                    weights_info={"stem": "random_init_r18", "sha256": None, "meta": {}},
                    seed_index=0, seed=1000, seed_dir=folder, opts=RECOGNITION[protocol],
                    arch="resnet18", data=data, task=task, cache_dir=cache,
                    family="recognition")  # fmt: skip
    run_recognition_seed(spec)


@pytest.mark.parametrize("protocol", list(RECOGNITION))
def test_recognition_on_two_processes_equals_one_process(protocol, tmp_path_factory, tmp_path):
    """Fine-tuning: the grid's runs shared out over 2 processes give each run's score, the
    selected run and the test score of one process; the frozen-feature protocols: the
    features extracted in 2 shards give one process's sweep and episodes."""
    import json

    from synthetic.recognition import write_recognition

    data = str(write_recognition(tmp_path_factory.mktemp("rec")))
    task = "dtd" if protocol != "fewshot" else "cifar10"
    out = {}
    for procs in (2, 1):
        folder = tmp_path / f"p{procs}"
        start_workers(recognition_seed, (protocol, data, str(folder), str(tmp_path / f"f{procs}"),
                                         task), procs)  # fmt: skip
        out[procs] = json.loads((folder / "metrics.json").read_text())
        assert not (folder / "failed.json").exists()
    one, two = out[1], out[2]
    assert two["world_size"] == 2 and one["world_size"] == 1
    print(protocol, one["headline"])
    if protocol == "manyshot_finetune":
        assert [r["val"] for r in two["runs"]] == pytest.approx([r["val"] for r in one["runs"]])
        assert (two["best_lr"], two["best_wd"]) == (one["best_lr"], one["best_wd"])
        lines = (tmp_path / "p2" / "train_metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["iteration"] for x in lines] == [1, 2]  # each run once, in order
    assert two["headline"] == pytest.approx(one["headline"], rel=1e-6)


def cls_step(protocol: str, data: str, seed_dir: str, batch, out: str | None):
    """One training step of a classification protocol through its own DDP wrapping
    (``train._distributed``: global-batch BatchNorm where the protocol asks for it)."""
    import torch.distributed as dist

    from transfer.classification.train import Probe, Run, _distributed, _train_step, build_head
    from transfer.spec import SeedSpec

    torch.set_default_dtype(torch.float64)
    spec = SeedSpec(protocol=protocol, protocol_name=f"{protocol}_smoke", smoke=True,
                    dataset="synthetic", shapes_root=None, weights="", weights_info={},
                    seed_index=0, seed=1000, seed_dir=seed_dir, data=data, arch="resnet18",
                    family="classification")  # fmt: skip
    torch.manual_seed(0)
    run = Run(spec)
    probe = Probe(run.backbone, build_head(run), run.p.stages, frozen=run.p.kind != "finetune")
    net = _distributed(run, probe)
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    x, y = batch
    mine = slice(run.rank * len(y) // run.world, (run.rank + 1) * len(y) // run.world)
    net.train()
    loss, _ = _train_step(run, net, opt, x[mine], y[mine], 0.1, "a test step")
    value = torch.tensor([loss.item()])
    if run.world > 1:
        dist.all_reduce(value)
    state = {k: v.clone() for k, v in probe.state_dict().items() if v.is_floating_point()}
    record = {"loss": value.item() / run.world, "state": state}
    if out is None:
        return record
    if run.rank == 0:
        torch.save(record, out)
    return None


@pytest.mark.parametrize("protocol", ["semisup_10pct", "linear_multilayer"])
def test_a_classification_step_on_two_processes_equals_one_process(
    protocol, shapes_root, tmp_path, float64
):
    """Fine-tuning (global BatchNorm in the whole network) and the multi-layer probe (its
    heads' BatchNorm): one step on 2 processes with 4 images each equals one process with
    the 8: the loss, the weights and the running statistics after the step."""
    from synthetic.writers import write_label_subsets

    data = str(shapes_root / "imagefolder")
    write_label_subsets(Path(data))  # the semi-supervised subsets, as the smoke runs write them
    g = torch.Generator().manual_seed(3)
    batch = (torch.randn(8, 3, 64, 64, generator=g), torch.randint(0, 6, (8,), generator=g))
    start_workers(
        cls_step, (protocol, data, str(tmp_path / "s2"), batch, str(tmp_path / "two.pt")), 2
    )
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    one = cls_step(protocol, data, str(tmp_path / "s1"), batch, None)
    # the loop takes the cross-entropy of float32 logits (``.float()``, for AMP): the loss
    # and its gradient carry float32 rounding (eps 1.2e-7); the rest is float64
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    stats = [k for k in one["state"] if "running_var" in k]
    assert len(stats) >= 4
    for k, v in one["state"].items():
        scale = v.abs().max().item()
        torch.testing.assert_close(two["state"][k], v, rtol=1e-6, atol=1e-6 * scale, msg=k)
