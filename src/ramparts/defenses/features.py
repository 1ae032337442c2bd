"""Internal representations of a model: what data sanitisers (spectral signatures, activation clustering) read.

A layer is named by its path in ``dict(model.named_modules())`` (``"classifier.3"``, ``"features"``,
``""`` for the model itself). ``"NAME"`` reads the module's output; ``"NAME:input"`` reads the first
positional argument of its ``forward`` (captured with a forward pre-hook). The input form is what makes
:func:`default_layer` architecture-independent: the penultimate representation of a classifier is
the input of its last ``nn.Linear``, whatever module (ReLU, Dropout, Flatten, a functional call in
``forward``) produced it. Hooks, not ``nn.Sequential`` slicing, so any ``nn.Module`` works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, check_int, invalid

__all__ = ["INPUT_SUFFIX", "check_expected_fraction", "class_features", "default_layer", "layer_features"]

INPUT_SUFFIX = ":input"


def default_layer(model: nn.Module) -> str:
    """``"<last nn.Linear>:input"``: the penultimate representation, the layer Tran et al. and Chen et al. read.

    "Last" is the last ``nn.Linear`` in registration order (``model.named_modules()``), which is the
    output layer in every zoo architecture and in the usual ``__init__`` order. A model without an
    ``nn.Linear`` gets an error asking for an explicit ``layer``.
    """
    if not isinstance(model, nn.Module):
        raise invalid("model", type(model).__name__, "a torch.nn.Module", cls=RampartsTypeError)
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise invalid(
            "layer",
            None,
            "an explicit layer name for a model without nn.Linear",
            f"pass layer=<name> or <name>{INPUT_SUFFIX}, a name from model.named_modules()",
        )
    return linears[-1] + INPUT_SUFFIX


@torch.no_grad()
def layer_features(
    model: nn.Module,
    x: Tensor,
    layer: str,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> Tensor:
    """Activations of ``layer`` (see the module docstring) for every row of ``x``, as a CPU tensor [N, D].

    Computed in eval mode under ``no_grad``, ``batch_size`` inputs at a time, on ``device`` (default:
    the model's device; when given, the model is moved there, as :func:`ramparts.training.predict_logits`
    does). The model's train/eval mode is restored afterwards and the hook is always removed.
    """
    if not isinstance(model, nn.Module):
        raise invalid("model", type(model).__name__, "a torch.nn.Module", cls=RampartsTypeError)
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise invalid("x", type(x).__name__, "a tensor with a batch dimension", cls=RampartsTypeError)
    check_int("batch_size", batch_size, 1)
    module, read_input = _resolve(model, layer)
    dev = _model_device(model) if device is None else torch.device(device)
    model.to(dev)
    captured: list[Tensor] = []

    def keep(value: Any) -> None:
        if not isinstance(value, Tensor):
            raise invalid(
                "layer",
                layer,
                f"a layer whose {'input' if read_input else 'output'} is a tensor, not {type(value).__name__}",
                f"pick another name, or the {INPUT_SUFFIX} / output form of this one",
            )
        captured.append(value.detach().flatten(1).cpu() if value.ndim > 1 else value.detach()[:, None].cpu())

    if read_input:
        handle = module.register_forward_pre_hook(lambda _m, args: keep(args[0] if args else None))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: keep(out))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            model(x[start : start + batch_size].to(dev))
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        return torch.empty(0, 0)
    if len(captured) != -(-x.shape[0] // batch_size):
        raise invalid("layer", layer, "a module called exactly once per forward pass", "pick another layer")
    return torch.cat(captured)


def class_features(
    model: nn.Module,
    data: Dataset,
    *,
    layer: str | None,
    classes: Sequence[int] | None,
    batch_size: int = 256,
) -> tuple[str, Tensor, dict[int, Tensor]]:
    """The layer used, the features of every record [N, D], and the record indices of each analysed class.

    Shared by the per-class sanitisers: ``classes`` None means every label present in ``data.y``.
    """
    if not isinstance(data, Dataset):
        raise invalid("data", type(data).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
    name = default_layer(model) if layer is None else layer
    labels = data.y.cpu()
    present = sorted(int(c) for c in torch.unique(labels))
    if classes is None:
        chosen = present
    else:
        if isinstance(classes, str | bytes) or not isinstance(classes, Sequence):
            raise invalid("classes", classes, "None or a sequence of class indices", cls=RampartsTypeError)
        chosen = sorted({check_int("classes[i]", c, 0) for c in classes})
        missing = [c for c in chosen if c not in present]
        if missing:
            raise invalid(
                "classes", missing, f"labels present in data.y: {present}", "drop the absent labels"
            )
    feats = layer_features(model, data.x, name, batch_size=batch_size)
    return name, feats, {c: (labels == c).nonzero().flatten() for c in chosen}


def check_expected_fraction(value: object) -> float:
    """``expected_fraction`` validated: a number strictly between 0 and 0.5 (poison is the minority)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid("expected_fraction", value, "a number in (0, 0.5)", cls=RampartsTypeError)
    if not 0.0 < float(value) < 0.5:
        raise invalid(
            "expected_fraction",
            value,
            "a fraction in (0, 0.5): an upper bound on the share of poison among one class's records",
            "estimate how many records of the attacked class may be poisoned, e.g. 0.1",
        )
    return float(value)


def _resolve(model: nn.Module, layer: str) -> tuple[nn.Module, bool]:
    """The module named by ``layer`` and whether its input (True) or output (False) is read."""
    if not isinstance(layer, str):
        raise invalid("layer", layer, "a module name (str)", cls=RampartsTypeError)
    read_input = layer.endswith(INPUT_SUFFIX)
    name = layer[: -len(INPUT_SUFFIX)] if read_input else layer
    modules = dict(model.named_modules())
    if name not in modules:
        names = ", ".join(repr(n) for n in modules)
        raise invalid(
            "layer",
            layer,
            f"one of the model's module names: {names} (append {INPUT_SUFFIX!r} to read a module's input)",
            "pass a name from model.named_modules(), or None for the penultimate layer",
        )
    return modules[name], read_input


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    tensors = [*model.parameters(), *model.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")
