"""common/: the architecture table, flags from dataclasses, the CLI error wrapper, the stop
flag and the rank agreement helpers."""

from __future__ import annotations

import argparse
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from common.archs import ARCHS, arch_by_name, arch_from_layout, get_arch
from common.badimages import BadCount, SkipBad, TooManyBadImages, open_rgb
from common.cli import EXIT_INTERRUPTED, EXIT_USAGE, Interrupted, UserError, run_cli
from common.distributed import any_rank, every_rank
from common.flags import add_flags, given, opt
from common.signals import StopFlag

REPO = Path(__file__).resolve().parents[2]


def test_arch_table_matches_torchvision():
    import torchvision

    for a in ARCHS.values():
        net = getattr(torchvision.models, a.torchvision)(weights=None)
        blocks = tuple(len(getattr(net, f"layer{i}")) for i in range(1, 5))
        assert blocks == a.blocks, a.key
        assert net.fc.in_features == a.feature_dim, a.key
        if a.bottleneck:
            assert net.layer1[0].conv1.out_channels == a.width_per_group, a.key
    assert arch_from_layout((3, 4, 6, 3), True, 64).key == "resnet50"
    assert arch_from_layout((3, 4, 6, 3), False, 64).key == "resnet34"
    assert arch_from_layout((3, 4, 6, 3), True, 128).key == "resnet50x2"
    assert arch_from_layout((3, 4, 10, 3), True, 64).key == "resnet101"  # truncated body
    assert arch_from_layout((3, 4, 40, 3), True, 64) is None
    assert arch_by_name("ResNet-50 x2") is ARCHS["resnet50x2"]
    with pytest.raises(ValueError, match="unknown arch 'resnet7'"):
        get_arch("resnet7")


@dataclass
class Demo:
    size: int = opt(3, "a size")
    scale: tuple[float, float] = opt((0.2, 1.0), "a range", metavar=("MIN", "MAX"))
    ks: tuple[int, ...] = opt((20, 200), "several k")
    name: str | None = opt(None, "a name", choices=("a", "b"))
    on: bool = opt(True, "a switch")


def test_flags_come_from_the_fields():
    p = add_flags(argparse.ArgumentParser(), Demo)
    assert given(p.parse_args([]), Demo) == {}  # nothing typed, nothing given
    args = p.parse_args(
        ["--size", "5", "--scale", "0.3", "0.9", "--ks", "1", "--name", "b", "--no-on"]
    )
    assert given(args, Demo) == {
        "size": 5,
        "scale": (0.3, 0.9),
        "ks": (1,),
        "name": "b",
        "on": False,
    }
    assert Demo(**given(args, Demo)) == Demo(5, (0.3, 0.9), (1,), "b", False)
    assert "(default: 0.2 1.0)" in p.format_help() and "a switch (default: True)" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "c"])


def test_a_field_without_help_is_refused():
    @dataclass
    class Bad:
        x: int = 1

    with pytest.raises(TypeError, match="no help text"):
        add_flags(argparse.ArgumentParser(), Bad)


def test_cli_wrapper_one_line_for_user_errors_traceback_for_bugs(capsys):
    p = argparse.ArgumentParser()
    p.add_argument("--what")

    def main(args):
        if args.what == "user":
            raise UserError("the file x is missing; pass --data")
        if args.what == "stop":
            raise Interrupted("resumable checkpoint written")
        if args.what == "bug":
            raise KeyError("internal")
        return 3

    assert run_cli(main, p, ["--what", "user"]) == EXIT_USAGE
    assert capsys.readouterr().err == "error: the file x is missing; pass --data\n"
    assert run_cli(main, p, ["--what", "stop"]) == EXIT_INTERRUPTED
    assert run_cli(main, p, ["--what", "ok"]) == 3
    with pytest.raises(KeyError):
        run_cli(main, p, ["--what", "bug"])


def test_stop_flag_catches_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) == before


def _agree(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    res = [any_rank(rank == 1), every_rank(rank == 1), any_rank(False), every_rank(True)]
    torch.save(res, f"{out}/{rank}.pt")
    torch.distributed.destroy_process_group()


def test_rank_agreement_with_two_gloo_processes(tmp_path, free_port):
    import torch.multiprocessing as mp

    mp.spawn(_agree, args=(free_port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"{rank}.pt") == [True, False, False, True]
    assert any_rank(True) and not every_rank(False)  # no process group: the local value


def test_bad_images_are_dropped_counted_and_refused_past_the_fraction():
    collate = SkipBad()
    seen, bad, batch = collate([torch.ones(2), None, torch.zeros(2)])
    assert (seen, bad) == (3, 1) and batch.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert collate([None, None]) == (2, 2, None)
    count = BadCount()
    assert count.take((3, 1, "b")) == "b" and count.take((2, 2, None)) is None
    assert (count.seen, count.bad) == (5, 3)
    count.check(0.6, "of x", "fix")  # 3 / 5 = 0.6 is allowed
    count.check(0.0, "of x", "fix", min_seen=6)  # too few seen to judge yet
    with pytest.raises(
        TooManyBadImages, match=r"^3 of 5 images of x could not be read, .*fraction 0.5; fix$"
    ):
        count.check(0.5, "of x", "fix")
    assert SkipBad(len)([None, "ab", "cde"])[2] == 2  # a custom collate sees the good items


def test_open_rgb_decodes_or_returns_none(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (5, 4), 7).save(tmp_path / "grey.png")
    im = open_rgb(tmp_path / "grey.png")
    assert im.mode == "RGB" and im.size == (5, 4) and im.getpixel((0, 0)) == (7, 7, 7)
    (tmp_path / "text.jpg").write_text("not an image")
    data = (tmp_path / "grey.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("missing.jpg", "text.jpg", "cut.png"):
        assert open_rgb(tmp_path / name) is None, name

    def broken(*a, **k):  # Pillow's PNG reader raises SyntaxError for some broken files
        raise SyntaxError("broken PNG file")

    monkeypatch.setattr(Image, "open", broken)
    assert open_rgb(tmp_path / "grey.png") is None


def test_a_lock_is_exclusive_across_processes_and_released_when_its_holder_dies(tmp_path):
    """held_or_none: None while another process holds the lock; the OS frees it when that
    process is killed (no stale lock after SIGKILL)."""
    import signal
    import subprocess
    import sys
    import time

    from common.locks import held_or_none

    path = tmp_path / "seed0.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
         "l.acquire(); print('held', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with held_or_none(path) as lock:
            assert lock is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    while True:
        with held_or_none(path) as lock:
            if lock is not None:
                assert lock.is_locked
                break
        assert time.time() < deadline, "the dead holder's lock was never released"
        time.sleep(0.1)


def test_detectron2s_environment_report_keeps_torchs_cuda_home_warning_off_the_console():
    """detectron2's collect_env imports torch's extension builder, which logs "No CUDA runtime
    is found, using CUDA_HOME=..." on a machine with an nvcc and no GPU: silenced by level,
    while the logger's errors still pass."""
    import logging

    from common.quiet import QUIET_LOGGERS, silence_known_warnings

    silence_known_warnings()
    log = logging.getLogger("torch.utils.cpp_extension")
    assert "torch.utils.cpp_extension" in QUIET_LOGGERS
    assert not log.isEnabledFor(logging.WARNING) and log.isEnabledFor(logging.ERROR)


def test_an_unwritable_output_is_one_line_naming_the_path(capsys):
    """A file where a folder is needed, or a folder that cannot be written (read-only,
    immutable), ends in one line naming the path and the fix, exit code 2."""
    import errno

    p = argparse.ArgumentParser()
    p.add_argument("--what")
    errors = {
        "file": NotADirectoryError(errno.ENOTDIR, "Not a directory", "/r/out/x"),
        "exists": FileExistsError(errno.EEXIST, "File exists", "/r/out"),
        "denied": PermissionError(errno.EPERM, "Operation not permitted", "/r/locked"),
    }

    def main(args):
        raise errors[args.what]

    expected = {
        "file": "error: /r/out/x: a file stands where a folder is needed (it or a folder above "
        "it); pass another output folder, or move the file\n",
        "exists": "error: /r/out exists and is not a folder; pass another output folder, or move "
        "it\n",
        "denied": "error: /r/locked: permission denied (Operation not permitted); pass a folder "
        "you can write (is it read-only or immutable?)\n",
    }
    for what, line in expected.items():
        assert run_cli(main, p, ["--what", what]) == EXIT_USAGE
        assert capsys.readouterr().err == line


@pytest.mark.parametrize(
    "argv",
    [
        ["transfer/convert.py", "{w}", "{f}/x.pkl"],
        ["transfer/run_voc.py", "--weights", "{w}", "--dataset", "synthetic", "--output", "{f}"],
        [
            "transfer/run_linear.py",
            "--weights",
            "{w}",
            "--protocol",
            "knn",
            "--dataset",
            "synthetic",
            "--output",
            "{f}",
        ],  # fmt: skip
        ["-m", "pretrain", "--recipe", "test", "--output", "{f}"],
    ],
    ids=["convert", "run_voc", "run_linear", "pretrain"],
)
def test_every_entry_point_names_an_output_that_is_a_file(tmp_path, argv):
    import subprocess
    import sys

    import torch
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    afile = tmp_path / "afile"
    afile.write_text("")
    args = [a.format(w=weights, f=afile) for a in argv]
    res = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {afile}") and "Traceback" not in res.stderr, res.stderr
