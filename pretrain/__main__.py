"""``python -m pretrain``: self-supervised pretraining (CARE, BYOL, SimSiam, GSG, MaskCo).

    python -m pretrain --method care --arch resnet50 --data /path/to/imagenet --epochs 200
    torchrun --nproc_per_node=8 -m pretrain --method care --data /path/to/imagenet
    python -m pretrain --method byol --arch resnet18 --epochs 5 --image-size 64 --batch-size 32

Without --data it trains on the built-in synthetic shapes (ImageFolder layout, written under
<output>/shapes). Defaults are each method's paper's unless marked "ours"; "per method"
flags take the method's value unless given: CARE / BYOL (DESIGN.md s. 4) base lr 0.05,
warmup 10, EMA 0.99 -> 1 cosine, crop 0.08-1, BYOL augmentations, heads 4096/256/4096;
SimSiam / SimSiam-GSG / BYOL-GSG (s. 5) base lr 0.05, no warmup, fixed predictor lr,
EMA 0.99 constant (BYOL-GSG), crop 0.2-1, SimSiam augmentations, heads 2048/2048/512;
MaskCo (s. 6; ours, MoCo v2-like) base lr 0.03, no warmup, EMA 0.999 constant, crop 0.2-1,
SimSiam (= MoCo v2) augmentations, head 2048/128 without BN.
Re-running with the same --output resumes from <output>/checkpoint.pth.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from pretrain.methods import METHODS, HeadConfig
from pretrain.models import ARCHS
from pretrain.train import INTERRUPTED_EXIT_CODE, Interrupted, NonFiniteLoss, PretrainConfig, run


def get_args_parser() -> argparse.ArgumentParser:
    d, h = PretrainConfig(), HeadConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    a = p.add_argument
    a("--method", choices=sorted(METHODS), default=d.method, help="method (default: care)")
    a("--arch", choices=list(ARCHS), default=d.arch,
      help="backbone (default: resnet50; resnet50x2 = torchvision wide_resnet50_2)")
    a("--data", default=None, help="ImageFolder root with train/<class>/ (and val/<class>/ for "
      "the kNN probe), e.g. ImageNet; default: synthetic shapes")
    a("--output", default=d.output, help="run folder (default: %(default)s)")
    a("--out", default=None, help="final checkpoint (default: <output>/<method>_<arch>.pth)")
    a("--epochs", type=int, default=d.epochs, help="epochs (paper: 100 ablations, 200/400 main)")
    a("--batch-size", type=int, default=d.batch_size,
      help="images per GPU/process (paper: 1024 over 8 GPUs = 128)")
    a("--base-lr", type=float, default=None, help="lr = base_lr x global batch / 256 "
      "(per method; papers: 0.05)")
    a("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay (1e-4)")
    a("--momentum", type=float, default=d.momentum, help="SGD momentum (0.9)")
    a("--warmup-epochs", type=float, default=None,
      help="linear warmup from --start-lr, then cosine (per method: CARE/BYOL 10, SimSiam 0)")
    a("--start-lr", type=float, default=d.start_lr, help="warmup start lr (1e-6)")
    a("--base-tau", type=float, default=None,
      help="target EMA momentum at step 0 (per method: 0.99)")
    a("--tau-schedule", choices=["cosine", "constant"], default=None,
      help="EMA momentum: cosine to 1 (CARE/BYOL) or constant (BYOL-GSG); per method")
    a("--image-size", type=int, default=d.image_size, help="crop size (224)")
    a("--crop-scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
      help="RandomResizedCrop area range (per method: 0.08 1.0 BYOL/CARE, 0.2 1.0 SimSiam); "
      "small synthetic images need a larger MIN")
    a("--aug", choices=["byol", "simsiam", "crop"], default=None,
      help="augmentation recipe: byol (asymmetric blur/solarize) or simsiam (per method); "
      "crop = crops and flips only (short sanity runs on synthetic silhouettes). Blur sigma "
      "scales with --image-size / 224")
    a("--fix-pred-lr", action=argparse.BooleanOptionalAction, default=None,
      help="keep the predictor's lr at the base value (per method: SimSiam/GSG on)")
    a("--amp", choices=["auto", "bf16", "fp16", "none"], default=d.amp,
      help="mixed precision: auto = bf16 on CUDA, none on CPU (paper: fp16 AMP)")
    a("--batch-aug", choices=["auto", "on", "off"], default=d.batch_aug,
      help="decode (nvjpeg on CUDA) and augment batched on the training device, the loader "
      "workers only read files and draw the random choices: auto = on with CUDA, except "
      "MaskCo (ours; the paper's code augments with PIL in the workers)")
    a("--no-channels-last", action="store_true", help="keep NCHW on GPU (ours: channels_last)")
    a("--workers", type=int, default=d.workers, help="data loader workers per process (8)")
    a("--seed", type=int, default=d.seed, help="random seed (0)")
    a("--save-every", type=int, default=d.save_every, help="checkpoint every N epochs (10)")
    a("--knn-every", type=int, default=d.knn_every, help="kNN probe every N epochs, 0 = never")
    a("--knn-limit-per-class", type=int, default=0,
      help="bank images per class for the kNN probe (0 = all train images)")
    a("--log-every", type=int, default=d.log_every, help="metrics.jsonl line every N steps")
    a("--max-bad-frac", type=float, default=d.max_bad_frac,
      help="fail when more than this fraction of an epoch's images is unreadable (0.01)")
    a("--resume", default=None, help="checkpoint to resume (default: <output>/checkpoint.pth "
      "if present)")
    a("--synthetic-size", type=int, default=d.synthetic_size,
      help="side of the generated shapes images without --data (ours: 96)")
    a("--synthetic-per-class", type=int, default=d.synthetic_per_class,
      help="generated training images per class without --data (ours: 48)")
    g = p.add_argument_group("heads")
    g.add_argument("--proj-hidden", type=int, default=None,
                   help="projector hidden (per method: 4096 BYOL/CARE, 2048 SimSiam)")
    g.add_argument("--proj-dim", type=int, default=None,
                   help="projection dim (per method: 256 BYOL/CARE, 2048 SimSiam)")
    g.add_argument("--pred-hidden", type=int, default=None,
                   help="predictor hidden (per method: 4096 BYOL/CARE, 512 SimSiam)")
    g = p.add_argument_group("GSG (simsiam_gsg, byol_gsg)")
    g.add_argument("--gsg-distance", choices=["normalized", "raw"], default=h.gsg_distance,
                   help="distance that picks the closest cross-image pair: Euclidean between "
                   "L2-normalised (ours, default) or raw projections")
    g = p.add_argument_group("MaskCo (every default here is ours: the supplement does not "
                             "give them)")
    g.add_argument("--mph-layers", type=int, default=h.mph_layers,
                   help="mask prediction head: 3x3 conv-BN-ReLU layers on res5 (2)")
    g.add_argument("--mph-dim", type=int, default=h.mph_dim, help="its width (512)")
    g.add_argument("--roi-size", type=int, default=h.roi_size,
                   help="RoIAlign bins per side on res5, then averaged (3)")
    g.add_argument("--temperature", type=float, default=h.temperature,
                   help="InfoNCE temperature (0.2, MoCo v2)")
    g.add_argument("--n-neg-boxes", type=int, default=h.n_neg_boxes,
                   help="negative boxes per image (paper: 16)")
    g.add_argument("--intra-negatives", action="store_true",
                   help="MaskCo(+in): also n-neg-boxes boxes of the same image")
    g.add_argument("--intra-max-iou", type=float, default=h.intra_max_iou,
                   help="an intra-image negative overlaps the positive box by less (0.3)")
    g.add_argument("--neg-box-scale", type=float, nargs=2, default=h.neg_box_scale,
                   metavar=("MIN", "MAX"), help="negative box sides / view side (0.2 0.6)")
    g.add_argument("--box-scale", type=float, nargs=2, default=h.box_scale,
                   metavar=("MIN", "MAX"),
                   help="masked box sides / sides of the region both views see (0.3 0.6)")
    g.add_argument("--min-overlap", type=float, default=h.min_overlap,
                   help="the key crop covers at least this fraction of the query crop (0.3)")
    g.add_argument("--mask-fill", choices=["mean", "noise"], default=h.mask_fill,
                   help="masked pixels: the dataset mean or Gaussian noise (mean)")
    g = p.add_argument_group("CARE's T-stream")
    g.add_argument("--n-blocks", type=int, default=h.n_blocks, help="transformer blocks n (5)")
    g.add_argument("--heads", type=int, default=h.heads, help="attention heads (4, of 128 dims)")
    g.add_argument("--mid-dim", type=int, default=h.mid_dim, help="block width (512)")
    g.add_argument("--pos-enc", choices=["abs", "rel", "none"], default=h.pos_enc,
                   help="position encoding: abs (official code), rel (paper), none")
    g.add_argument("--lambda-att", type=float, default=h.lambda_att, help="lambda (100)")
    g.add_argument("--att-loss", choices=["code", "eq4"], default=h.att_loss,
                   help="L_att as in the official code (MSE) or the paper's Eq. 4")
    g.add_argument("--t-detach", action="store_true",
                   help="the paper's text: L_t trains only the T-stream (code: also res2-res4)")
    return p


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    heads = HeadConfig(proj_hidden=args.proj_hidden, proj_dim=args.proj_dim,
                       pred_hidden=args.pred_hidden, n_blocks=args.n_blocks, heads=args.heads,
                       mid_dim=args.mid_dim, pos_enc=args.pos_enc, lambda_att=args.lambda_att,
                       att_loss=args.att_loss, t_detach=args.t_detach,
                       gsg_distance=args.gsg_distance, mph_layers=args.mph_layers,
                       mph_dim=args.mph_dim, roi_size=args.roi_size,
                       temperature=args.temperature, n_neg_boxes=args.n_neg_boxes,
                       intra_negatives=args.intra_negatives, intra_max_iou=args.intra_max_iou,
                       neg_box_scale=tuple(args.neg_box_scale), box_scale=tuple(args.box_scale),
                       min_overlap=args.min_overlap, mask_fill=args.mask_fill)
    return PretrainConfig(
        method=args.method, arch=args.arch, data=args.data, output=args.output, out=args.out,
        epochs=args.epochs, batch_size=args.batch_size, base_lr=args.base_lr,
        weight_decay=args.weight_decay, momentum=args.momentum, warmup_epochs=args.warmup_epochs,
        start_lr=args.start_lr, base_tau=args.base_tau, tau_schedule=args.tau_schedule,
        image_size=args.image_size, aug=args.aug, fix_pred_lr=args.fix_pred_lr,
        crop_scale=tuple(args.crop_scale) if args.crop_scale else None, amp=args.amp,
        batch_aug=args.batch_aug,
        channels_last=not args.no_channels_last, workers=args.workers, seed=args.seed,
        save_every=args.save_every, knn_every=args.knn_every,
        knn_limit_per_class=args.knn_limit_per_class, log_every=args.log_every,
        max_bad_frac=args.max_bad_frac, resume=args.resume, synthetic_size=args.synthetic_size,
        synthetic_per_class=args.synthetic_per_class, heads=heads)


def main(args: argparse.Namespace) -> int:
    try:
        run(config_from_args(args))
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except (NonFiniteLoss, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
