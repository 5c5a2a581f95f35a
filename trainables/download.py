"""Datasets that arrive by themselves: CIFAR-10/100 and Tiny ImageNet downloaded once into a data root.

CIFAR's URLs, file names and md5 checksums are torchvision's own (`torchvision.datasets.CIFAR10`
class attributes, read at call time), and so are the download (with its progress bar), the archive
check and the extraction (`torchvision.datasets.utils`). Tiny ImageNet has no torchvision class: its
official zip is fetched the same way and its extracted layout verified (no published checksum to cite).

Atomic: the archive is downloaded and extracted under `<root>/.partial-<pid>/`, verified there, and
only then its folder is renamed into place; a killed or failed download leaves nothing that looks
like a dataset (and a later attempt removes stale partial folders).
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from trainables.data import DataError
from trainables.folders import first_missing, unwritable

DATA_URL_ENV = "LAYERWISE_DATA_URL"  # a mirror's base URL, like --data-url
NETWORK_TIMEOUT_S = 30  # per socket operation: an unreachable mirror fails well within a minute
PARTIAL_PREFIX = ".partial-"
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@dataclass(frozen=True)
class Archive:
    """One downloadable dataset: where it is published, its checksum (None: none published), what it unpacks to."""

    dataset: str
    url: str
    md5: str | None
    folder: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def url_from(self, base_url: str | None) -> str:
        """The archive's URL, or the same file name under a mirror's base URL."""
        return f"{base_url.rstrip('/')}/{self.filename}" if base_url else self.url


def archive_for(dataset: str) -> Archive | None:
    """The downloadable archive of `dataset` (None for user-supplied layouts such as imagefolder)."""
    if dataset in ("cifar10", "cifar100"):
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if dataset == "cifar10" else CIFAR100
        return Archive(dataset, cls.url, cls.tgz_md5, cls.base_folder)
    if dataset == "tinyimagenet":
        return Archive(dataset, TINYIMAGENET_URL, None, "tiny-imagenet-200")
    return None


def is_present(dataset: str, root: Path) -> bool:
    """Whether `root` already holds `dataset` in a layout the loaders read (no decoding)."""
    parquet_layout = dataset in ("cifar10", "cifar100", "parquet")
    if parquet_layout and (root / "train.parquet").is_file() and (root / "test.parquet").is_file():
        return True  # found before `archive_for`, which imports torchvision (1.7 s of a study's start here)
    archive = archive_for(dataset)
    if archive is not None and (root / archive.folder).is_dir():
        return True
    if parquet_layout:
        return False
    if dataset == "tinyimagenet":
        return (root / "wnids.txt").is_file()
    return root.is_dir()


def ensure_dataset(dataset: str, root: str | Path, base_url: str | None = None) -> Path:
    """`root` holding `dataset`: as it is when present, else downloaded once (DataError naming URL and path)."""
    root = Path(root)
    if is_present(dataset, root):
        return root
    archive = archive_for(dataset)
    if archive is None:  # nothing to download: the loader's own layout error says what is expected
        return root
    url = archive.url_from(base_url or os.environ.get(DATA_URL_ENV))
    why = unwritable(root)
    if why:
        raise DataError(f"{archive.dataset}: cannot download into {root} ({why}); {_by_hand(archive, url, root)}")
    created = first_missing(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{PARTIAL_PREFIX}*"):  # left by a killed download
        shutil.rmtree(stale, ignore_errors=True)
    partial = root / f"{PARTIAL_PREFIX}{os.getpid()}"
    try:
        _download(archive, url, partial, root)
        _verify(archive, partial, url, root)
        os.replace(partial / archive.folder, root / archive.folder)
    except BaseException:
        shutil.rmtree(created or partial, ignore_errors=True)  # folders this call made, or its partial one
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return root


def _by_hand(archive: Archive, url: str, root: Path) -> str:
    return (f"to place it by hand, download {url} and extract it in {root} (it unpacks to '{archive.folder}/'), "
            f"or pass --data-dir to a folder that has it, or --data-url (${DATA_URL_ENV}) for a mirror")


def _download(archive: Archive, url: str, partial: Path, root: Path) -> None:
    from torchvision.datasets.utils import calculate_md5, download_url

    print(f"downloading {archive.dataset} from {url} to {root}", flush=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NETWORK_TIMEOUT_S)  # torchvision's urlopen has no timeout of its own
    try:
        download_url(url, str(partial), archive.filename)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(f"{archive.dataset}: could not download {url} ({reason}); "
                        f"{_by_hand(archive, url, root)}") from None
    finally:
        socket.setdefaulttimeout(previous)
    got = calculate_md5(partial / archive.filename) if archive.md5 else None
    if archive.md5 and got != archive.md5:
        raise DataError(f"{archive.dataset}: checksum mismatch for {url}: md5 {got}, expected {archive.md5} "
                        f"(torchvision's); the file is corrupt or not the original; {_by_hand(archive, url, root)}")


def _verify(archive: Archive, partial: Path, url: str, root: Path) -> None:
    """Extract the archive inside `partial` and check what it unpacked, before anything is moved into place."""
    from torchvision.datasets.utils import extract_archive

    try:
        extract_archive(str(partial / archive.filename), str(partial))
    except Exception as err:  # tarfile/zipfile raise many types for a broken archive
        raise DataError(f"{archive.dataset}: cannot extract {url} ({err}); {_by_hand(archive, url, root)}") from None
    problem = _layout_problem(archive, partial)
    if problem:
        raise DataError(f"{archive.dataset}: {url} unpacked {problem}; {_by_hand(archive, url, root)}")


def _layout_problem(archive: Archive, partial: Path) -> str | None:
    """What is wrong with the extracted dataset (torchvision's per-file md5s for CIFAR), or None."""
    folder = partial / archive.folder
    if not folder.is_dir():
        return f"no '{archive.folder}/' folder"
    if archive.dataset in ("cifar10", "cifar100"):
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if archive.dataset == "cifar10" else CIFAR100
        try:
            cls(str(partial), train=True, download=False)
            cls(str(partial), train=False, download=False)
        except RuntimeError as err:
            return f"files that fail torchvision's checks ({err})"
        return None
    missing = [p for p in ("wnids.txt", "train", "val/val_annotations.txt") if not (folder / p).exists()]
    return f"a '{archive.folder}/' without {', '.join(missing)}" if missing else None
