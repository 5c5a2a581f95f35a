"""`defer_dynamo_import()`: torch.optim's guards against TorchDynamo without importing it up front.

torch 2.15 wraps `Optimizer.add_param_group`, `zero_grad`, `state_dict` and `load_state_dict` in
`torch._disable_dynamo`, whose first call imports `torch._dynamo` — and with it Inductor, SymPy and Triton — only
to build a wrapper that keeps a compiled region from tracing the method. So constructing an optimizer cost every
trial process that import: measured on the 2-core CI machine (Intel Xeon, a fresh process), `build_training` for
ResNet-8 + LARS 1.4–2.1 s against 0.5 ms once the import is done, and the process 150 MiB more resident memory
(678 against 529 MiB); a study's trial actor and each Ray Train worker paid it in their first trial. Not a torch
option: the wrapper looks up the disabled function on the original one (`fn.__dynamo_disable`), so
`defer_dynamo_import` puts one there that calls the method directly while `torch._dynamo` is not loaded — nothing
can be compiling then — and otherwise builds torch's own disabled function, as torch would have, and keeps it.
A run that compiles (`compile=true`, the fused optimizer step) imports dynamo itself, and from then on the methods
are guarded as before. The layer-wise optimizers call it; torch's SGD and Adam would gain nothing, as their `step`
imports dynamo on every call (`_use_grad_for_differentiable`), and CLARS' exact norms import it through torch.func.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer

DYNAMO = "torch._dynamo"
DISABLED_ATTRIBUTE = "__dynamo_disable"  # where `torch._compile._disable_dynamo`'s wrapper caches its disabled fn
GUARDED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def defer_dynamo_import() -> None:
    """Let `Optimizer`'s dynamo-disabled methods run without importing `torch._dynamo` until something else has
    (idempotent; a method torch no longer wraps is left as it is)."""
    for name in GUARDED_METHODS:
        original = getattr(Optimizer.__dict__.get(name), "__wrapped__", None)
        if original is not None and getattr(original, DISABLED_ATTRIBUTE, None) is None:
            setattr(original, DISABLED_ATTRIBUTE, _disabled_once_dynamo_loads(original))


def _disabled_once_dynamo_loads(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` called as is while `torch._dynamo` is not imported; once it is, torch's disabled `method`."""
    def call(*args: Any, **kwargs: Any) -> Any:
        dynamo = sys.modules.get(DYNAMO)
        if dynamo is None or not hasattr(dynamo, "disable"):  # absent, or still being imported: nothing compiles
            return method(*args, **kwargs)
        disabled = dynamo.disable(method, True, wrapping=False)  # what torch._disable_dynamo(method) builds
        setattr(method, DISABLED_ATTRIBUTE, disabled)
        return disabled(*args, **kwargs)
    return call
