"""Named, declarative study definitions: `get_space(name)`, `SPACES`.

`demo` (CPU, minutes), `cifar10_cpu` (CPU, 45 minutes measured: the committed result, with verdicts),
the TVLARS paper's grid and its Table 1 per dataset as one study each (`search_spaces.paper`), and the papers'
ImageNet studies (`search_spaces.imagenet`: ResNet-50 at 8K/16K/32K, the CLARS paper's DenseNet-121 and
MobileNet-V2; GPUs). A space fixes the trial settings, searches hyperparameters per optimizer variant,
and carries its objective, ASHA budget and resources; `python -m study.run --list` prints them all.
"""

from __future__ import annotations

import difflib

from search_spaces.cpu import CIFAR10_CPU, TRANSFER_LARS
from search_spaces.demo import DEMO
from search_spaces.imagenet import BATCHES as IMAGENET_BATCHES, CLARS_MODELS, imagenet_spaces
from search_spaces.paper import PAPER_DATASETS, PAPER_FAMILIES, PAPER_LRS, batch_label, paper_spaces
from search_spaces.spec import SearchSpace

SPACES: dict[str, SearchSpace] = {"demo": DEMO, "cifar10_cpu": CIFAR10_CPU, "transfer_lars": TRANSFER_LARS,
                                  **paper_spaces(), **imagenet_spaces()}


def available() -> str:
    """All space names, the paper grid written as its pattern."""
    grid = (f"[bt_]{{{','.join(f.name for f in PAPER_FAMILIES)}}}[_cifar100|_tinyimagenet]"
            f"_bs{{{','.join(batch_label(b) for b in PAPER_LRS)}}}")
    imagenet = (f"imagenet_resnet50_bs{{{','.join(batch_label(b) for b in IMAGENET_BATCHES)}}}, "
                f"clars_imagenet_{{{','.join(CLARS_MODELS)}}}")
    return (f"demo, cifar10_cpu, transfer_lars, table1_{{{','.join(PAPER_DATASETS)}}}, the paper grid {grid}, "
            f"the ImageNet studies {imagenet} ({len(SPACES)} spaces in all; `--list` prints each)")


class UnknownSpace(ValueError):
    pass


def get_space(name: str) -> SearchSpace:
    if name not in SPACES:
        close = difflib.get_close_matches(name, SPACES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownSpace(f"--space: unknown {name!r}.{hint} Available: {available()}")
    return SPACES[name]
