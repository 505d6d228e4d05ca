"""The ADE20K UPerNet protocol's pieces against hand-derived numbers and the toolkit's rules."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from transfer.segmentation import loader
from transfer.segmentation.config import build_config
from transfer.segmentation.modeling import multiscale_probabilities


@pytest.fixture(scope="module")
def cfg():
    return build_config("ade20k_upernet", device="cpu")


@pytest.fixture(scope="module")
def model(cfg):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_upernet_widths_are_the_toolkits(model):
    head = model.sem_seg_head
    assert [c.weight.shape for c in head.ppm] == [(512, 2048, 1, 1)] * 4
    assert head.pool_scales == (1, 2, 3, 6)
    assert head.ppm_out.weight.shape == (512, 2048 + 4 * 512, 3, 3)
    assert [c.weight.shape[:2] for c in head.lateral] == [(512, 256), (512, 512), (512, 1024)]
    assert [c.weight.shape for c in head.fpn_out] == [(512, 512, 3, 3)] * 3
    assert head.fuse.weight.shape == (512, 4 * 512, 3, 3)
    assert head.predictor.weight.shape == (150, 512, 1, 1) and head.predictor.bias is not None
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(m.bias is not None for m in convs) == 1  # only the classifier has a bias


def test_bn_is_synchronised_with_the_toolkits_momentum_and_init(model):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, torch.nn.SyncBatchNorm) for m in bns)
    assert {m.momentum for m in bns} == {0.001}
    head_bns = [m for m in model.sem_seg_head.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert all(torch.all(m.weight == 1) and torch.allclose(m.bias, torch.tensor(1e-4))
               for m in head_bns)  # fmt: skip
    w = model.sem_seg_head.fuse.weight  # He-normal, fan-in: std sqrt(2 / (2048 * 9))
    assert abs(w.std().item() / math.sqrt(2 / (2048 * 9)) - 1) < 0.02


@pytest.mark.parametrize("sizes", [[(97, 61)], [(65, 130), (101, 33)]])
def test_training_batch_and_logits_are_at_stride_4(model, sizes):
    """Odd image sizes: the batch pads to a multiple of 32, logits and labels at H/4 x W/4,
    the labels' batch padding class 0 (the toolkit's quirk)."""
    inputs = [{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8),
               "sem_seg": torch.full((math.ceil(h / 4), math.ceil(w / 4)), 7)}
              for h, w in sizes]  # fmt: skip
    images, labels = model.batch(inputs)
    H = loader.round_up(max(h for h, _ in sizes), 32)
    W = loader.round_up(max(w for _, w in sizes), 32)
    assert images.shape == (len(sizes), 3, H, W) and labels.shape == (len(sizes), H // 4, W // 4)
    h0, w0 = sizes[0]
    assert torch.all(images[0, :, h0:] == 0) and torch.all(images[0, :, :, w0:] == 0)
    assert torch.all(labels[0, : math.ceil(h0 / 4), : math.ceil(w0 / 4)] == 7)
    assert torch.all(labels[0, math.ceil(h0 / 4) :] == 0)  # batch padding: class 0
    with torch.no_grad():
        logits = model.logits(images)
    assert logits.shape == (len(sizes), 150, H // 4, W // 4)


def test_padding_is_ignored_with_the_flag():
    from detectron2.modeling import build_model

    cfg = build_config(
        "ade20k_upernet", device="cpu", opts=["MODEL.UPERNET.BATCH_PAD_LABEL", "255"]
    )
    m = build_model(cfg)
    _, labels = m.batch([{"image": torch.zeros(3, 40, 40, dtype=torch.uint8),
                          "sem_seg": torch.zeros(10, 10, dtype=torch.long)}])  # fmt: skip
    assert labels.shape == (1, 16, 16) and torch.all(labels[0, 10:] == 255)


def test_inference_averages_scales_at_full_resolution(model):
    images = [torch.zeros(3, 64, 96, dtype=torch.uint8), torch.zeros(3, 96, 128, dtype=torch.uint8)]
    x = {"images": images, "height": 61, "width": 87}
    with torch.no_grad():
        out = model([x])[0]["sem_seg"]
    assert out.shape == (150, 61, 87)
    # a float32 sum of 150 probabilities: at most 150 roundings of eps each
    assert torch.allclose(out.sum(0), torch.ones(61, 87), atol=150 * torch.finfo().eps)


def test_multiscale_average_by_hand():
    """Scale A: logits (0, ln 3) -> softmax (1/4, 3/4); scale B: (0, 0) -> (1/2, 1/2);
    constant maps stay constant under bilinear upsampling: the average is (3/8, 5/8)."""
    a = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1).expand(1, 2, 2, 3)
    b = torch.zeros(1, 2, 4, 5)
    p = multiscale_probabilities([a, b], (7, 9))
    assert p.shape == (2, 7, 9)
    assert torch.allclose(p[0], torch.full((7, 9), 3 / 8)) and torch.allclose(
        p[1], torch.full((7, 9), 5 / 8)
    )


def test_train_and_test_sizes_by_hand():
    assert loader.train_size(480, 640, 300, 1000) == (300, 400)
    assert loader.train_size(300, 1200, 600, 1000) == (250, 1000)  # long side capped
    assert loader.train_size(333, 500, 375, 1000) == (375, 563)  # 563.06: truncated
    assert loader.train_size(640, 427, 450, 1000) == (674, 450)  # portrait: 674.47
    assert loader.test_size(333, 500, 375, 1000) == (384, 576)  # each rounded up to 32
    assert loader.round_up(32, 32) == 32 and loader.round_up(33, 32) == 64


def _write_pair(tmp_path, h, w, label):
    img = tmp_path / "a.jpg"
    seg = tmp_path / "a.png"
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(img)
    Image.fromarray(label.astype(np.uint8)).save(seg)
    return {"file_name": str(img), "sem_seg_file_name": str(seg), "height": h, "width": w}


def test_label_is_padded_unlabelled_then_downsampled_by_4(tmp_path):
    """A 10 x 10 label at short side 10 (scale 1): padded to 12 x 12 with 255, then PIL's
    nearest takes pixel 4i + 2: out[i, j] = label[4i + 2, 4j + 2], row / column 2 padding."""
    label = np.add.outer(np.arange(10) * 16, np.arange(10))  # label[r, c] = 16 r + c
    d = _write_pair(tmp_path, 10, 10, label)
    s = loader.train_sample(d, short=10, flip=False, max_size=1000, label_stride=4)
    assert s["image"].shape == (3, 10, 10) and s["image"].dtype == torch.uint8
    got = s["sem_seg"].numpy()
    want = np.full((3, 3), 255)
    for i in range(2):
        for j in range(2):
            want[i, j] = 16 * (4 * i + 2) + (4 * j + 2)
    assert np.array_equal(got, want)
    flipped = loader.train_sample(d, short=10, flip=True, max_size=1000, label_stride=4)
    assert flipped["sem_seg"][0, 0].item() == 16 * 2 + (9 - 2)  # column 9 - 2 after the flip


def test_a_label_of_another_size_is_refused(tmp_path):
    d = _write_pair(tmp_path, 10, 12, np.zeros((10, 10)))
    with pytest.raises(ValueError, match="label size .* differs from the image"):
        loader.train_sample(d, 10, False, 1000, 4)


def test_groups_have_one_orientation_and_one_short_side():
    sizes = [(100, 200), (200, 100), (150, 150), (300, 100), (90, 120), (120, 90)] * 5
    s = loader.OrientationBatchSampler(sizes, 2, (300, 375, 450), True, seed=3, groups=2)
    it = iter(s)
    steps = [next(it) for _ in range(40)]
    sides, flips, mixed = set(), set(), 0
    for step in steps:
        assert len(step) == 2  # two groups (the toolkit's two GPUs) per iteration
        for g in step:
            assert len(g) == 2 and len({loader.portrait(*sizes[i]) for i, _, _ in g}) == 1
            assert len({short for _, short, _ in g}) == 1
            sides.add(g[0][1])
            flips |= {f for _, _, f in g}
        mixed += step[0][0][1] != step[1][0][1]  # each group draws its own short side
    assert sides == {300, 375, 450} and flips == {False, True} and mixed > 0
    # square images go with the landscape ones (h <= w), as in the toolkit
    assert not loader.portrait(150, 150) and loader.portrait(151, 150)
    # ranks take disjoint images from the same permutation
    r0 = next(iter(loader.OrientationBatchSampler(sizes[:4], 1, (300,), False, 3, 0, 2)))
    r1 = next(iter(loader.OrientationBatchSampler(sizes[:4], 1, (300,), False, 3, 1, 2)))
    assert r0[0][0][0] != r1[0][0][0]
    # a resumed stream continues where it stopped
    s.start_batch = 7
    resumed = iter(s)
    assert [next(resumed) for _ in range(5)] == steps[7:12]


@pytest.mark.parametrize("world,groups", [(1, 2), (2, 1), (4, None)])
def test_an_iterations_groups_are_shared_by_the_processes(cfg, world, groups):
    """4 images = 2 groups of 2 (the toolkit's 2 GPUs x 2): one process makes both, two make
    one each, four cannot share them (a one-line error naming the settings)."""
    from common.cli import BadInput

    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.IMS_PER_GROUP) == (4, 2)
    if groups is None:
        with pytest.raises(BadInput, match="4 images are 2 groups of 2 .* 4 processes"):
            loader.groups_per_process(cfg, world)
    else:
        assert loader.groups_per_process(cfg, world) == groups


def test_poly_lr_by_hand():
    """lr_it = 0.02 (1 - it / max_iter)^0.9, set before every iteration."""
    from transfer.segmentation.trainer import SegTrainer

    cfg = build_config("ade20k_upernet", device="cpu", opts=["SOLVER.MAX_ITER", "100"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02, momentum=0.9)
    sched = SegTrainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.02)
    assert lrs[50] == pytest.approx(0.02 * 0.5**0.9) == pytest.approx(0.0107177, rel=1e-5)
    assert lrs[99] == pytest.approx(0.02 * 0.01**0.9) == pytest.approx(3.16979e-4, rel=1e-5)


def _toolkit_groups(module):
    """The toolkit's ``group_weight`` (train.py), transcribed: conv / linear weights decay;
    their biases and BatchNorm weights / biases do not."""
    decay, no_decay = [], []
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            no_decay += [m.weight, m.bias]
    return decay, no_decay


def test_weight_decay_only_on_conv_and_linear_weights(cfg, model):
    from detectron2.solver import build_optimizer

    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert not opt.defaults["nesterov"]
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    decay, no_decay = _toolkit_groups(model)
    assert len(decay) + len(no_decay) == len(list(model.parameters())) == len(wd)
    assert {wd[id(p)] for p in decay} == {1e-4} and {wd[id(p)] for p in no_decay} == {0.0}
    assert {g["lr"] for g in opt.param_groups} == {0.02}


# --- the evaluator against the toolkit's formulas ------------------------------------------


def _toolkit_accuracy(preds, label):
    """utils.accuracy, transcribed (labels -1 = unlabelled)."""
    valid = label >= 0
    return float((valid * (preds == label)).sum()) / (valid.sum() + 1e-10), valid.sum()


def _toolkit_intersection_union(pred, label, num_class):
    """utils.intersectionAndUnion, transcribed."""
    pred = np.asarray(pred).copy() + 1
    label = np.asarray(label).copy() + 1
    pred = pred * (label > 0)
    inter = pred * (pred == label)
    a_i, _ = np.histogram(inter, bins=num_class, range=(1, num_class))
    a_p, _ = np.histogram(pred, bins=num_class, range=(1, num_class))
    a_l, _ = np.histogram(label, bins=num_class, range=(1, num_class))
    return a_i, a_p + a_l - a_i


def _toolkit_eval(pairs, num_class):
    """eval.py's summary over (prediction, label) pairs: dataset-level I / U, mean over
    classes; accuracy weighted by labelled pixels."""
    inter = union = 0
    correct = pixels = 0.0
    for pred, label in pairs:
        acc, pix = _toolkit_accuracy(pred, label)
        i, u = _toolkit_intersection_union(pred, label, num_class)
        inter, union = inter + i, union + u
        correct, pixels = correct + acc * pix, pixels + pix
    return 100 * np.mean(inter / (union + 1e-10)), 100 * correct / pixels


@pytest.fixture
def seg_dataset(tmp_path):
    """3 classes, 2 images with unlabelled pixels (255), registered with detectron2."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    rng = np.random.default_rng(0)
    recs, gts = [], []
    for k, (h, w) in enumerate([(6, 7), (5, 4)]):
        gt = rng.integers(0, 3, (h, w))
        gt[0, :2] = 255
        path = tmp_path / f"gt{k}.png"
        Image.fromarray(gt.astype(np.uint8)).save(path)
        recs.append({"file_name": f"img{k}.jpg", "sem_seg_file_name": str(path)})
        gts.append(gt)
    name = "test_toolkit_formula"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: recs)
    MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], ignore_label=255)
    return name, recs, gts


def _evaluate(name, recs, preds):
    from transfer.segmentation.evaluation import ToolkitSemSegEvaluator

    ev = ToolkitSemSegEvaluator(name)
    ev.reset()
    for rec, pred in zip(recs, preds):
        scores = torch.nn.functional.one_hot(torch.as_tensor(pred), 3).permute(2, 0, 1).float()
        ev.process([rec], [{"sem_seg": scores}])
    return ev.evaluate()["sem_seg"]


def test_semseg_evaluator_equals_the_toolkit_formulas(seg_dataset):
    name, recs, gts = seg_dataset
    rng = np.random.default_rng(1)
    preds = [np.where(rng.uniform(size=g.shape) < 0.6, g % 255, rng.integers(0, 3, g.shape))
             for g in gts]  # fmt: skip
    res = _evaluate(name, recs, preds)
    toolkit_labels = [np.where(g == 255, -1, g) for g in gts]
    miou, pacc = _toolkit_eval(zip(preds, toolkit_labels), 3)
    assert res["mIoU"] == pytest.approx(miou, abs=1e-6)
    assert res["mIoU_toolkit"] == pytest.approx(miou, abs=1e-6)
    assert res["pACC"] == pytest.approx(pacc, abs=1e-6)


def test_the_two_mious_differ_only_by_absent_classes(seg_dataset):
    """By hand: gt (ignoring 255) only classes 0 / 1, the prediction never 2: detectron2
    averages over 2 classes, the toolkit over 3 (class 2 counts 0)."""
    name, recs, gts = seg_dataset
    gts2 = [np.where(g == 2, 1, g) for g in gts]
    for rec, g in zip(recs, gts2):
        Image.fromarray(g.astype(np.uint8)).save(rec["sem_seg_file_name"])
    preds = [np.where(g == 255, 0, g) for g in gts2]  # perfect on labelled pixels
    res = _evaluate(name, recs, preds)
    assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)
    assert res["mIoU_toolkit"] == pytest.approx(200 / 3)
    miou, _ = _toolkit_eval(zip(preds, [np.where(g == 255, -1, g) for g in gts2]), 3)
    assert res["mIoU_toolkit"] == pytest.approx(miou)


# --- data: layout, preparation, synthetic twin, backbone -----------------------------------


def test_prepare_writes_detectron2_labels_and_names_a_bad_layout(tmp_path):
    from common.cli import InputNotFound
    from synthetic.ade20k import write_ade20k
    from transfer.segmentation import data

    with pytest.raises(InputNotFound, match="ADEChallengeData2016/images/"):
        data.prepare(tmp_path / "nothing")
    root = write_ade20k(tmp_path / "twin", train=3, val=2, size=64)
    written = data.prepare(root)
    assert [p.name for p in written] == ["training", "validation"]
    assert data.prepare(root) == []  # already there
    release = root / "ADEChallengeData2016"
    raw = np.array(Image.open(release / "annotations/training/ADE_train_00000001.png"))
    conv = np.array(Image.open(release / "annotations_detectron2/training/ADE_train_00000001.png"))
    assert np.array_equal(conv[raw == 0], np.full((raw == 0).sum(), 255))
    assert np.array_equal(conv[raw > 0], raw[raw > 0] - 1)
    assert (raw == 0).any() and len(np.unique(raw)) >= 4  # unlabelled outlines, many classes
    names = data.register(root, synthetic=True)
    dicts, bad = data.dataset_dicts(names[0])
    assert bad == []
    assert len(dicts) == 3 and all(d["height"] > 0 and d["width"] > 0 for d in dicts)
    from detectron2.data import MetadataCatalog

    assert len(MetadataCatalog.get(names[1]).stuff_classes) == 150


def test_a_truncated_label_is_named_with_the_fix_and_the_rerun_finishes(tmp_path):
    from common.cli import BadInput
    from synthetic.ade20k import write_ade20k
    from transfer.segmentation import data

    root = write_ade20k(tmp_path / "twin", train=3, val=2, size=64)
    label = root / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png"
    good = label.read_bytes()
    label.write_bytes(good[: len(good) // 2])
    with pytest.raises(BadInput, match=r"ADE_train_00000002.png: this ADE20K label cannot be "
                                       r"read .*restore it from the release"):  # fmt: skip
        data.prepare(root, workers=1)
    label.write_bytes(good)
    assert [p.name for p in data.prepare(root)] == ["training", "validation"]


def test_the_backbone_is_loaded_and_verified(tmp_path):
    """The converted torchvision ResNet-50 arrives tensor by tensor; a changed tensor is
    caught."""
    import torchvision
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from transfer.convert import convert_file
    from transfer.d2engine import verify_backbone_loaded

    torch.manual_seed(0)
    src = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), src)
    pkl = tmp_path / "tv.pkl"
    convert_file(src, pkl)
    cfg = build_config("ade20k_upernet", device="cpu", weights=str(pkl))
    m = build_model(cfg)
    DetectionCheckpointer(m).load(str(pkl))
    assert verify_backbone_loaded(m, str(pkl)) == 265
    with open(pkl, "rb") as f:
        d = pickle.load(f)
    d["model"]["res4.2.conv2.weight"] = d["model"]["res4.2.conv2.weight"] + 1
    with open(pkl, "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(RuntimeError, match="1 differ.*res4.2.conv2.weight"):
        verify_backbone_loaded(m, str(pkl))


def test_figure_colours(tmp_path):
    """150 distinct colours (class 0 is the devkit's index 1: (128, 0, 0)), unlabelled
    black, and a user's colour map read from a CSV."""
    from tables.aggregate import TablesError
    from tables.segfigure import colourise, default_palette, read_palette

    pal = default_palette()
    assert pal.shape == (150, 3) and len({tuple(c) for c in pal}) == 150
    assert tuple(pal[0]) == (128, 0, 0) and tuple(pal[1]) == (0, 128, 0)
    assert tuple(pal[6]) == (128, 128, 128)  # index 7: all three low bits
    img = colourise(np.array([[0, 255], [149, 1]]), pal)
    assert tuple(img[0, 1]) == (0, 0, 0) and tuple(img[1, 0]) == tuple(pal[149])
    path = tmp_path / "c.csv"
    np.savetxt(path, np.arange(450).reshape(150, 3) % 256, delimiter=",", fmt="%d")
    assert tuple(read_palette(path)[1]) == (3, 4, 5)
    np.savetxt(path, np.zeros((10, 3)), delimiter=",")
    with pytest.raises(TablesError, match="expected 150 rows"):
        read_palette(path)


class _ToolkitUPerNet(torch.nn.Module):
    """The toolkit's UPerNet decoder (models.py), transcribed with its attribute layout,
    plain BatchNorm and parametrised widths (the toolkit: ppm 512, fpn_dim 512)."""

    def __init__(self, num_class, fc_dim, fpn_inplanes, fpn_dim, ppm_dim, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        nn = torch.nn

        def cbr(i, o, k):
            return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False),
                                 nn.BatchNorm2d(o), nn.ReLU(inplace=True))  # fmt: skip

        self.ppm_pooling = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in pool_scales)
        self.ppm_conv = nn.ModuleList(cbr(fc_dim, ppm_dim, 1) for _ in pool_scales)
        self.ppm_last_conv = cbr(fc_dim + len(pool_scales) * ppm_dim, fpn_dim, 3)
        self.fpn_in = nn.ModuleList(cbr(c, fpn_dim, 1) for c in fpn_inplanes[:-1])
        self.fpn_out = nn.ModuleList(cbr(fpn_dim, fpn_dim, 3) for _ in fpn_inplanes[:-1])
        self.conv_last = nn.Sequential(cbr(len(fpn_inplanes) * fpn_dim, fpn_dim, 3),
                                       nn.Conv2d(fpn_dim, num_class, 1))  # fmt: skip

    def forward(self, conv_out):
        interp = torch.nn.functional.interpolate
        conv5 = conv_out[-1]
        size = conv5.shape[2:]
        ppm_out = [conv5] + [conv(interp(pool(conv5), size, mode="bilinear", align_corners=False))
                             for pool, conv in zip(self.ppm_pooling, self.ppm_conv)]  # fmt: skip
        f = self.ppm_last_conv(torch.cat(ppm_out, 1))
        feats = [f]
        for i in reversed(range(len(conv_out) - 1)):
            x = self.fpn_in[i](conv_out[i])
            f = x + interp(f, size=x.shape[2:], mode="bilinear", align_corners=False)
            feats.append(self.fpn_out[i](f))
        feats.reverse()
        out_size = feats[0].shape[2:]
        fused = [feats[0]] + [interp(t, out_size, mode="bilinear", align_corners=False)
                              for t in feats[1:]]  # fmt: skip
        return torch.nn.functional.log_softmax(self.conv_last(torch.cat(fused, 1)), dim=1)


def _copy_head_into_toolkit(head, ref) -> None:
    """Our head's tensors under the toolkit's names (a detectron2 Conv2d holds its norm)."""
    pairs = [(head.ppm[i], ref.ppm_conv[i]) for i in range(4)]
    pairs += [(head.ppm_out, ref.ppm_last_conv), (head.fuse, ref.conv_last[0])]
    pairs += [(head.lateral[i], ref.fpn_in[i]) for i in range(3)]
    pairs += [(head.fpn_out[i], ref.fpn_out[i]) for i in range(3)]
    with torch.no_grad():
        for ours, theirs in pairs:
            theirs[0].weight.copy_(ours.weight)
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(theirs[1], k).copy_(getattr(ours.norm, k))
        ref.conv_last[1].weight.copy_(head.predictor.weight)
        ref.conv_last[1].bias.copy_(head.predictor.bias)


@pytest.mark.parametrize("train", [True, False])
def test_upernet_head_equals_the_toolkits_decoder(train):
    """Same weights, same features (odd sizes): the same log-probabilities, with batch
    statistics (training) and running statistics (inference)."""
    from detectron2.layers import ShapeSpec

    from transfer.segmentation.modeling import UPerNetHead

    cfg = build_config("ade20k_upernet", device="cpu", freeze=False,
                       opts=["MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.UPERNET.PPM_DIM", "8",
                             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5",
                             "MODEL.SEM_SEG_HEAD.NORM", "BN"])  # fmt: skip
    channels = {"res2": 8, "res3": 16, "res4": 24, "res5": 32}
    torch.manual_seed(0)
    head = UPerNetHead(cfg, {k: ShapeSpec(channels=c) for k, c in channels.items()})
    ref = _ToolkitUPerNet(5, 32, (8, 16, 24, 32), 16, 8)
    for m in head.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    _copy_head_into_toolkit(head, ref)
    head.double().train(train)  # float64: the formulas, not the CPU's float32 kernels
    ref.double().train(train)
    sizes = {"res2": (25, 19), "res3": (13, 10), "res4": (7, 5), "res5": (4, 3)}
    feats = {k: torch.randn(2, channels[k], *s, dtype=torch.float64) for k, s in sizes.items()}
    ours = torch.log_softmax(head(feats), dim=1)
    theirs = ref([feats[k] for k in ("res2", "res3", "res4", "res5")])
    assert ours.shape == theirs.shape == (2, 5, 25, 19)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-10), (ours - theirs).abs().max()


def _toolkit_batch(records, short, flips, max_size=1000, pad=32, stride=4, dtype=torch.float32):
    """The toolkit's TrainDataset.__getitem__ for one batch, transcribed (its short side and
    flips given): normalised images and labels (-1 unlabelled) in zero-filled batch arrays
    (``dtype``: the toolkit's float32, or float64 to compare formulas)."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    n = len(records)
    ws, hs = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i, r in enumerate(records):
        scale = min(short / min(r["height"], r["width"]), max_size / max(r["height"], r["width"]))
        ws[i], hs[i] = r["width"] * scale, r["height"] * scale
    bw, bh = loader.round_up(int(ws.max()), pad), loader.round_up(int(hs.max()), pad)
    images = torch.zeros(n, 3, bh, bw, dtype=dtype)
    labels = torch.zeros(n, bh // stride, bw // stride, dtype=torch.long)
    for i, r in enumerate(records):
        img = Image.open(r["file_name"]).convert("RGB")
        seg = Image.open(r["raw_label"])
        if flips[i]:
            img, seg = img.transpose(Image.FLIP_LEFT_RIGHT), seg.transpose(Image.FLIP_LEFT_RIGHT)
        img = img.resize((int(ws[i]), int(hs[i])), Image.BILINEAR)
        seg = seg.resize((int(ws[i]), int(hs[i])), Image.NEAREST)
        rounded = Image.new("L", (loader.round_up(seg.size[0], stride),
                                  loader.round_up(seg.size[1], stride)), 0)  # fmt: skip
        rounded.paste(seg, (0, 0))
        seg = rounded.resize((rounded.size[0] // stride, rounded.size[1] // stride), Image.NEAREST)
        pixels = np.array(img, np.float64 if dtype == torch.float64 else np.float32)
        x = (pixels / 255.0 - mean) / std
        images[i, :, : x.shape[0], : x.shape[1]] = torch.from_numpy(x.transpose(2, 0, 1))
        s = torch.from_numpy(np.array(seg)).long() - 1
        labels[i, : s.shape[0], : s.shape[1]] = s
    return images, labels


def _train_records(tmp_path, seed: int, train: int, size: int) -> list[dict]:
    """The synthetic twin's training records, each with its raw label (the toolkit's)."""
    from synthetic.ade20k import write_ade20k
    from transfer.segmentation import data

    root = write_ade20k(tmp_path / "ade", seed=seed, train=train, val=1, size=size)
    data.prepare(root)
    data.register(root, synthetic=True)
    dicts, _ = data.dataset_dicts("synthetic_ade20k_sem_seg_train")
    for d in dicts:
        d["raw_label"] = d["sem_seg_file_name"].replace("annotations_detectron2", "annotations")
    return dicts


def test_a_training_batch_equals_the_toolkits(tmp_path, model):
    """Two images of different sizes at one short side, one flipped: our loader + the
    model's batching give the toolkit's normalised batch and its labels (255 <-> -1)."""
    dicts = _train_records(tmp_path, seed=5, train=2, size=150)
    assert dicts[0]["height"] != dicts[1]["height"] or dicts[0]["width"] != dicts[1]["width"]
    short, flips = 375, (False, True)
    ours = [loader.train_sample(d, short, f, 1000, 4) for d, f in zip(dicts, flips)]
    images, labels = model.batch(ours)
    ref_images, ref_labels = _toolkit_batch(dicts, short, flips)
    assert images.shape == ref_images.shape and labels.shape == ref_labels.shape
    # element-wise float32 arithmetic by two formulas (values |x| < 2.7): a few ulps apart
    assert torch.allclose(images, ref_images, rtol=0, atol=16 * 2.7 * torch.finfo().eps)
    assert torch.equal(torch.where(labels == 255, -1, labels), ref_labels)
    assert (ref_labels == -1).any() and (labels == 0).any()


def _float64_model(model, cfg):
    """A float64 copy of ``model`` whose mean / std are the config's in float64 (its own
    buffers hold them rounded to float32)."""
    import copy

    net = copy.deepcopy(model).double()
    with torch.no_grad():
        net.pixel_mean.copy_(torch.tensor(cfg.MODEL.PIXEL_MEAN, dtype=torch.float64).view(3, 1, 1))
        net.pixel_std.copy_(torch.tensor(cfg.MODEL.PIXEL_STD, dtype=torch.float64).view(3, 1, 1))
    return net


def test_the_training_loss_is_the_mean_of_the_toolkits_per_gpu_losses(tmp_path, cfg, model):
    """Two groups (the toolkit's two GPUs), each with its own short side and padded size:
    our loss is the mean of the toolkit's per-GPU NLL means (train.py's ``loss.mean()``
    over its data-parallel losses), each group through the network on its own (float64)."""
    dicts = _train_records(tmp_path, seed=7, train=4, size=120)
    net = _float64_model(model, cfg).train()
    groups = [(dicts[:2], 64, (False, True)), (dicts[2:4], 96, (True, False))]
    inputs = [{**loader.train_sample(d, short, f, 1000, 4), "group": g}
              for g, (ds, short, flips) in enumerate(groups)
              for d, f in zip(ds, flips)]  # fmt: skip
    with torch.no_grad():
        ours = net(inputs)["loss_sem_seg"]
        per_gpu = []
        for ds, short, flips in groups:
            images, labels = _toolkit_batch(ds, short, flips, dtype=torch.float64)
            logp = torch.log_softmax(net.logits(images), dim=1)
            per_gpu.append(torch.nn.functional.nll_loss(logp, labels, ignore_index=-1))
        one_group = net([{**x, "group": 0} for x in inputs[:2]])["loss_sem_seg"]
    assert ours.item() == pytest.approx(torch.stack(per_gpu).mean().item(), rel=1e-9)
    assert one_group.item() == pytest.approx(per_gpu[0].item(), rel=1e-9)
    assert abs(per_gpu[0].item() - per_gpu[1].item()) > 1e-6  # the mean is not trivial


def test_the_multiscale_test_equals_the_toolkits(tmp_path, model):
    """ValDataset's resizes and eval.py's score accumulation, transcribed around the same
    network: our TestMapper + predict give the same averaged probabilities."""
    from synthetic.ade20k import write_ade20k
    from transfer.segmentation import data

    cfg = build_config("ade20k_upernet", device="cpu", opts=["INPUT.TEST_SHORT_SIDES", "(64, 96)"])
    root = write_ade20k(tmp_path / "ade", seed=6, train=1, val=1, size=90)
    data.prepare(root)
    data.register(root, synthetic=True)
    d = data.dataset_dicts("synthetic_ade20k_sem_seg_val")[0][0]
    net = _float64_model(model, cfg)  # the formulas, not the CPU's float32 kernels
    with torch.no_grad():
        ours = net.predict(loader.TestMapper(cfg)(d))["sem_seg"]
        img = Image.open(d["file_name"]).convert("RGB")
        w, h = img.size
        scores = torch.zeros(1, 150, h, w, dtype=torch.float64)
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        for short in (64, 96):
            scale = min(short / float(min(h, w)), 1000 / float(max(h, w)))
            th, tw = loader.round_up(int(h * scale), 32), loader.round_up(int(w * scale), 32)
            x = (np.float64(np.array(img.resize((tw, th), Image.BILINEAR))) / 255.0 - mean) / std
            logits = net.logits(torch.from_numpy(x.transpose(2, 0, 1))[None])
            up = torch.nn.functional.interpolate(
                logits, (h, w), mode="bilinear", align_corners=False
            )
            scores = scores + torch.softmax(up, dim=1) / 2
    assert ours.shape == (150, h, w)
    assert torch.allclose(ours, scores[0], rtol=0, atol=1e-12)
