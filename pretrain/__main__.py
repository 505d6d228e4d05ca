"""``python -m pretrain``: self-supervised pretraining (CARE, BYOL) of a ResNet.

    python -m pretrain --method care --arch resnet50 --data /path/to/imagenet --epochs 200
    torchrun --nproc_per_node=8 -m pretrain --method care --data /path/to/imagenet
    python -m pretrain --method byol --arch resnet18 --epochs 5 --image-size 64 --batch-size 32

Without --data it trains on the built-in synthetic shapes (ImageFolder layout, written under
<output>/shapes). Defaults are the paper's (CARE, DESIGN.md s. 4) unless marked "ours".
Re-running with the same --output resumes from <output>/checkpoint.pth.
"""

from __future__ import annotations

import argparse
import sys

from .methods import METHODS, HeadConfig
from .models import ARCHS
from .train import INTERRUPTED_EXIT_CODE, Interrupted, NonFiniteLoss, PretrainConfig, run


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
    a("--base-lr", type=float, default=d.base_lr, help="lr = base_lr x global batch / 256 "
      "(paper: 0.05)")
    a("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay (1e-4)")
    a("--momentum", type=float, default=d.momentum, help="SGD momentum (0.9)")
    a("--warmup-epochs", type=float, default=d.warmup_epochs,
      help="linear warmup from --start-lr (paper: 10), then cosine")
    a("--start-lr", type=float, default=d.start_lr, help="warmup start lr (1e-6)")
    a("--base-tau", type=float, default=d.base_tau,
      help="target EMA momentum at step 0, cosine to 1 (0.99)")
    a("--image-size", type=int, default=d.image_size, help="crop size (224)")
    a("--crop-scale", type=float, nargs=2, default=d.crop_scale, metavar=("MIN", "MAX"),
      help="RandomResizedCrop area range (0.08 1.0); small synthetic images need a larger MIN")
    a("--amp", choices=["auto", "bf16", "fp16", "none"], default=d.amp,
      help="mixed precision: auto = bf16 on CUDA, none on CPU (paper: fp16 AMP)")
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
    g = p.add_argument_group("heads (BYOL / CARE)")
    g.add_argument("--proj-hidden", type=int, default=h.proj_hidden, help="projector hidden (4096)")
    g.add_argument("--proj-dim", type=int, default=h.proj_dim, help="projection dim (256)")
    g.add_argument("--pred-hidden", type=int, default=h.pred_hidden, help="predictor hidden (4096)")
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
                       att_loss=args.att_loss, t_detach=args.t_detach)
    return PretrainConfig(
        method=args.method, arch=args.arch, data=args.data, output=args.output, out=args.out,
        epochs=args.epochs, batch_size=args.batch_size, base_lr=args.base_lr,
        weight_decay=args.weight_decay, momentum=args.momentum, warmup_epochs=args.warmup_epochs,
        start_lr=args.start_lr, base_tau=args.base_tau, image_size=args.image_size,
        crop_scale=tuple(args.crop_scale), amp=args.amp,
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
