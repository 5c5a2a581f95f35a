"""Which parameters of a model get no weight decay and no trust ratio, decided per parameter from its module.

The large-batch recipes (LARS/LAMB papers, timm's `param_groups_weight_decay` with `no_weight_decay()`) adapt
and decay only the weights of the layers that map features: convolutions, linear maps, attention projections,
embeddings, recurrent cells. Everything else is excluded: normalisation layers' scales and shifts, biases, and
tensors a module owns itself, such as ViT's class token and position embedding, Swin's relative-position bias
tables or ConvNeXt's layer scale. For BatchNorm/bias-only models (ResNets) this is exactly the tensors of at most
one dimension, the rule used when only tensors are given.
"""

from __future__ import annotations

from torch import Tensor, nn

# Modules whose multi-dimensional, non-bias parameters are weights: adapted and decayed.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag,
    nn.RNNBase, nn.RNNCellBase,
)
# Normalisation layers: their scales and shifts are never weights, whatever their shape.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def is_weight(module: nn.Module, local_name: str, param: Tensor) -> bool:
    """Whether `module`'s own parameter `local_name` is a layer weight (adapted, decayed) rather than excluded."""
    return (isinstance(module, WEIGHT_LAYERS) and not isinstance(module, NORM_LAYERS)
            and "bias" not in local_name and param.ndim > 1)


def excluded_names(model: nn.Module) -> set[str]:
    """Names (as `model.named_parameters()` gives them) of the parameters without weight decay or trust ratio."""
    weights = {id(p) for module in model.modules() for local, p in module.named_parameters(recurse=False)
               if is_weight(module, local, p)}  # a tied tensor is a weight if any owner uses it as one
    return {name for name, p in model.named_parameters() if id(p) not in weights}
