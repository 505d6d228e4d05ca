"""What a file that should be a checkpoint really is, said in words, without running it.

``sniff(path)``: an image, a document, an archive or text, from the first bytes.
``pickled_type(path)``: the type of the object a pickle (or a torch.save zip's ``data.pkl``)
holds, read by an unpickler whose every global is a stand-in: no code of the file runs.
``short(text)``: one line of a library's message, terminal escapes removed, cut at a word.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

_MAGIC = [
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x89HDF", "an HDF5 file"),
    (b"PK\x03\x04", "a zip archive"),
]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def sniff(path: str | Path) -> str | None:
    """ "a JPEG image", "a text file", ... from the first bytes; None for a pickle, a torch
    file or anything unrecognised."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            if what == "a zip archive" and not _plain_zip(path):
                return None  # a torch file, or a truncated zip (torch.load names that)
            return what
    if head and not head.startswith(b"\x80") and _is_text(head):
        return "a text file"
    return None


def _plain_zip(path: str | Path) -> bool:
    """A complete zip that is not a torch file."""
    try:
        with zipfile.ZipFile(path) as z:
            return not any(n.endswith("data.pkl") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


class _Stub:
    """An instance of a class a pickle names (the class is a stand-in made on the spot)."""

    stub_name = "object"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _stub_class(name: str) -> type:
    return type("Stub", (_Stub,), {"stub_name": name})


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return _stub_class(f"{module}.{name}")

    def persistent_load(self, pid):  # torch's storages
        return _stub_class("storage")()


_PLAIN = {dict: "dict", list: "list", tuple: "tuple", str: "str", int: "int", float: "float"}


def pickled_type(path: str | Path) -> str | None:
    """The type name of the object pickled in ``path`` (or in a torch zip's ``data.pkl``):
    "dict", "list", "collections.OrderedDict", "torchvision.models.resnet.ResNet", ...;
    None when it cannot be read."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                data = z.read(name)
        else:
            data = Path(path).read_bytes()
        obj = _StubUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception:  # noqa: BLE001 - anything unreadable: no type to tell
        return None
    if isinstance(obj, _Stub):
        return obj.stub_name
    return _PLAIN.get(type(obj), type(obj).__name__)


def short(text: str, limit: int = 120) -> str:
    """The first line of ``text`` without terminal escapes, cut at a word (with "...")."""
    line = (_ANSI.sub("", str(text)).strip().splitlines() or [""])[0]
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0].rstrip(" ,.;:") + " ..."
