"""A seed's logging: everything in its ``log.txt``, only warnings on the console.

What detectron2's ``default_setup`` does (the environment, the arguments and the full
config logged, ``config.yaml`` written, the RNGs seeded, cuDNN benchmark set), but the
``detectron2`` and ``fvcore`` loggers write INFO and DEBUG to the seed folder's ``log.txt``
only: the console keeps the progress bar and the runner's one line per seed. A seed's
handlers are removed when it ends (``releases_seed_logging``) and any left are removed before
the next seed's are added, so no seed's log receives another's lines, nor what a later run
in the same process (``--launcher inprocess``, the demo) logs before its own seeds.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

import torch
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import _ColorfulFormatter

LOGGERS = ("detectron2", "fvcore")
FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"


class KnownOnConsole(logging.Filter):
    """Keeps known, expected warnings off the console (they stay in log.txt): the detection
    heads that a backbone checkpoint has no tensors for (the suite verifies the backbone
    tensor by tensor instead)."""

    KNOWN = (("fvcore.common.checkpoint", "Some model parameters or buffers are not found"),)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(record.name == n and msg.startswith(m) for n, m in self.KNOWN)


def _reset(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def release_seed_logging() -> None:
    """Detach and close a seed's handlers; the loggers propagate again, as detectron2 left
    them before the seed."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        _reset(logger)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def releases_seed_logging(fn):
    """Decorates a seed's entry function: its logging is released however it ends."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release_seed_logging()

    return run


def setup_seed_logging(output_dir: str, console_level: int = logging.WARNING) -> None:
    """``log.txt`` (rank 0; ``log.txt.rank<k>`` elsewhere) at DEBUG, the console (rank 0)
    at ``console_level``, for detectron2's and fvcore's loggers."""
    rank = comm.get_rank()
    name = "log.txt" if rank == 0 else f"log.txt.rank{rank}"
    for logger_name in LOGGERS:
        logger = logging.getLogger(logger_name)
        _reset(logger)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        fh = logging.FileHandler(os.path.join(output_dir, name), mode="a")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(FORMAT, datefmt="%m/%d %H:%M:%S"))
        logger.addHandler(fh)
        if rank == 0:
            ch = logging.StreamHandler(sys.stdout)
            ch.setLevel(console_level)
            ch.addFilter(KnownOnConsole())
            ch.setFormatter(
                _ColorfulFormatter(
                    "[%(asctime)s %(name)s]: %(message)s",
                    datefmt="%m/%d %H:%M:%S",
                    root_name=logger_name,
                    abbrev_name="d2" if logger_name == "detectron2" else logger_name,
                )
            )
            logger.addHandler(ch)


def seed_setup(cfg, args: argparse.Namespace) -> None:
    """detectron2's ``default_setup`` with ``setup_seed_logging`` for its loggers."""
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
    comm.synchronize()
    setup_seed_logging(output_dir)
    logger = logging.getLogger("detectron2")
    logger.info(f"Rank of current process: {comm.get_rank()}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())
    logger.info("Command line arguments: " + str(args))
    if comm.is_main_process():
        path = os.path.join(output_dir, "config.yaml")
        logger.info(f"Running with full config:\n{cfg.dump()}")
        with open(path, "w") as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {path}")
    seed = cfg.SEED
    seed_all_rng(None if seed < 0 else seed + comm.get_rank())
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
