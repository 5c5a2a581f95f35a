"""`optim.dynamo_import`: building and checkpointing a layer-wise optimizer imports no TorchDynamo (each fresh
trial process saved 1.4–2.1 s of CPU and ~150 MiB), and once dynamo is loaded the methods are guarded as torch
guards them."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import torch

from optim import build_optimizer
from optim.dynamo_import import DISABLED_ATTRIBUTE, GUARDED_METHODS, defer_dynamo_import

LAYERWISE = {"lars": {"momentum": 0.9}, "larc": {"momentum": 0.9}, "tvlars": {"momentum": 0.9}, "lamb": {},
             "lambc": {}}


def _in_fresh_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_trial_and_every_layerwise_optimizer_run_without_importing_dynamo(cifar10_dir):
    """A fresh process runs a classification trial (LARS, one epoch, evaluated and checkpointed), then builds,
    steps and checkpoints every layer-wise optimizer: TorchDynamo is never imported."""
    out = _in_fresh_python(f"""
        import sys
        import torch
        from optim import build_optimizer
        from trainables.classification import train_classifier

        class Session:
            rank, world_size = 0, 1
            def device(self, wanted): return torch.device("cpu")
            def checkpoint(self): return None
            def report(self, metrics, directory, name): self.saved = directory is not None
            def wait_for_checkpoints(self): pass

        session = Session()
        history = train_classifier(dict(dataset="cifar10", data_dir={cifar10_dir!r}, model="resnet8", width=8,
                                        limit=200, val_size=100, test_limit=100, optimizer="lars", lr=1.0,
                                        momentum=0.9, batch_size=100, epochs=1, warmup_epochs=0, threads=1),
                                   session=session)
        assert session.saved and "val_top1" in history[-1], history
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                    torch.nn.Linear(64, 2))
        for name, hparams in {LAYERWISE!r}.items():
            optimizer = build_optimizer(name, model.named_parameters(), lr=0.1, **hparams)
            for _ in range(2):
                optimizer.zero_grad(set_to_none=True)
                model(torch.randn(2, 3, 6, 6)).square().mean().backward()
                optimizer.step()
            optimizer.load_state_dict(optimizer.state_dict())
        print("torch._dynamo" in sys.modules)
    """)
    assert out == "False"


def test_once_dynamo_is_loaded_the_methods_are_torchs_disabled_functions():
    importlib.import_module("torch._dynamo")  # loaded, as a run that compiles loads it

    defer_dynamo_import()
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer("lars", model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()

    @torch.compile(backend="eager")
    def clear(x):
        optimizer.zero_grad(set_to_none=True)  # a guarded method inside a compiled region: a graph break
        return x * 2

    assert torch.equal(clear(torch.ones(2)), torch.full((2,), 2.0))
    assert all(p.grad is None for p in model.parameters())
    optimizer.load_state_dict(optimizer.state_dict())
    for name in GUARDED_METHODS:
        disabled = getattr(getattr(torch.optim.Optimizer, name).__wrapped__, DISABLED_ATTRIBUTE)
        assert getattr(disabled, "_torchdynamo_disable", False), name
