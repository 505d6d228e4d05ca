"""Known third-party deprecation noise, silenced in one place (not our warnings)."""

from __future__ import annotations

import logging
import warnings

KNOWN = (
    # detectron2 v0.6 scripts a few helpers with torch.jit.script at import
    ("ignore", r"`torch.jit.script` is deprecated", FutureWarning, ""),
    ("ignore", "", DeprecationWarning, r"(detectron2|fvcore|iopath|pycocotools)(\..*)?"),
    # torchvision >= 0.29 deprecates its image codecs in favour of TorchCodec; they work, and
    # torchvision 0.26 has no TorchCodec to move to: one warning per decoded batch is noise
    (
        "ignore",
        "The image decoding and encoding capabilities of TorchVision are deprecated",
        DeprecationWarning,
        "",
    ),
    # detectron2 v0.6's anchor generator calls torch.meshgrid without indexing= (the 'ij'
    # default it relies on is what torch does)
    ("ignore", r"torch.meshgrid: in an upcoming release", UserWarning, ""),
    # several processes: detectron2 v0.6's all_gather pickles through a ByteStorage, and its
    # create_ddp_model passes broadcast_buffers=False (both work as they always did)
    ("ignore", r"TypedStorage is deprecated", UserWarning, r"detectron2(\..*)?"),
    ("ignore", r"`broadcast_buffers` is deprecated", FutureWarning, ""),
    # common.syncnorm's autograd all-reduce: torch 2.14 points to a private module instead
    ("ignore", r"torch.distributed.nn.functional.all_reduce is deprecated", FutureWarning, ""),
)


# loggers whose warnings are machine facts, not the run's: torch's extension builder warns
# "No CUDA runtime is found, using CUDA_HOME=..." at import wherever an nvcc is on the PATH
# of a machine without a GPU (detectron2 imports it; the suite builds no extension)
QUIET_LOGGERS = ("torch.utils.cpp_extension",)


def silence_known_warnings() -> None:
    """Install filters for ``KNOWN`` and raise ``QUIET_LOGGERS`` to errors; idempotent."""
    for action, message, category, module in KNOWN:
        warnings.filterwarnings(action, message=message, category=category, module=module)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
