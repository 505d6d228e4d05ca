"""Built-in synthetic "shapes" data in the real on-disk formats (ImageFolder, VOC, COCO).

``generate(root)`` writes (or reuses) every layout under ``root``::

    root/imagefolder/{train,val}/<class>/*.jpg          (pretraining, kNN / linear probes)
    root/VOC2007/{JPEGImages,Annotations,ImageSets/Main} (trainval + test)
    root/VOC2012/{...}                                   (trainval)
    root/coco/{train2017,val2017,annotations/instances_*.json}

so ``root`` can be used as ``$DETECTRON2_DATASETS`` and the loaders for real data read it
unchanged. A ``shapes.json`` stamp records the parameters; same parameters => reuse.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.locks import waiting_lock
from synthetic.render import CLASSES, Scene, SceneObject, render_scene
from synthetic.writers import (
    write_coco,
    write_imagefolder,
    write_label_subsets,
    write_silhouettes,
    write_voc,
)

__all__ = [
    "CLASSES",
    "Scene",
    "SceneObject",
    "ShapesSpec",
    "generate",
    "render_scene",
    "write_label_subsets",
    "write_silhouettes",
]

STAMP = "shapes.json"
LOCK = ".shapes.lock"  # held while a process writes the tree (two launches at once)
INCOMPLETE = ".shapes.incomplete"  # present while the tree is being written
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShapesSpec:
    """Parameters of a synthetic tree. Defaults keep generation to a few seconds."""

    seed: int = 0
    size: int = 128  # longest side of an image, pixels (each side in [0.75, 1] x size)
    imagefolder: dict[str, int] = field(default_factory=lambda: {"train": 16, "val": 8})
    voc2007: dict[str, int] = field(default_factory=lambda: {"trainval": 24, "test": 16})
    voc2012: dict[str, int] = field(default_factory=lambda: {"trainval": 16})
    coco: dict[str, int] = field(default_factory=lambda: {"train2017": 24, "val2017": 12})
    max_objects: int = 4  # per detection image
    distractors: int = 2  # at most, per ImageFolder image

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}


def generate(root: str | Path, spec: ShapesSpec | None = None, force: bool = False) -> Path:
    """Write every layout under ``root`` unless a stamp with the same spec is there.

    Returns the root. A root holding other files but no matching stamp is refused rather
    than overwritten, so real data is never clobbered.
    """
    spec = spec or ShapesSpec()
    root = Path(root)
    stamp = root / STAMP
    if stamp.exists() and not force and json.loads(stamp.read_text()) == spec.to_json():
        return root
    with waiting_lock(root / LOCK):  # another process may be writing it: wait, then look
        if stamp.exists() and not force and json.loads(stamp.read_text()) == spec.to_json():
            return root
        ours = {LOCK, INCOMPLETE}  # an interrupted earlier write leaves INCOMPLETE: redone
        if not stamp.exists() and not (root / INCOMPLETE).exists():
            if any(p.name not in ours for p in root.iterdir()):
                raise FileExistsError(
                    f"{root} is not empty and holds no {STAMP}: refusing to write synthetic "
                    "data into what may be a real dataset folder. Choose an empty folder."
                )
        _write(root, spec)
    return root


def _write(root: Path, spec: ShapesSpec) -> None:
    stamp = root / STAMP
    for part in ("imagefolder", "VOC2007", "VOC2012", "coco"):
        shutil.rmtree(root / part, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    (root / INCOMPLETE).touch()
    write_imagefolder(
        root / "imagefolder", spec.seed, spec.size, spec.imagefolder, spec.distractors
    )
    write_voc(root, 2007, spec.seed, spec.size, spec.voc2007, spec.max_objects)
    write_voc(root, 2012, spec.seed, spec.size, spec.voc2012, spec.max_objects)
    write_coco(root, spec.seed, spec.size, spec.coco, spec.max_objects)
    stamp.write_text(json.dumps(spec.to_json(), indent=1))  # last: marks the tree complete
    (root / INCOMPLETE).unlink()
