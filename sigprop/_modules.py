"""The modules of a model, walked once per measurement and shared by every step that needs them.

A deep network has thousands of modules, and one walk of ``named_modules()`` costs milliseconds
(~4 ms at 4,101 modules); checking the input, putting the model in measuring mode, finding the
marked additions, freezing parameters and counting batch norms each walked it again, on every
call. A :class:`Modules` is taken once per call of :func:`sigprop.measure` or
:func:`sigprop.find_blocks` and never kept beyond it: the model may change between calls.
"""

from __future__ import annotations

from functools import cached_property

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["Modules"]


class Modules:
    """Every module of ``model`` in ``named_modules()`` order, and what is derived from them.

    Args:
        model: the model, walked once here.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.named: list[tuple[str, nn.Module]] = list(model.named_modules())
        """``(qualified name, module)``, the model itself first (named ``""``)."""
        self.all: list[nn.Module] = [m for _, m in self.named]

    @cached_property
    def by_name(self) -> dict[str, nn.Module]:
        """The modules by qualified name."""
        return dict(self.named)

    @cached_property
    def batch_norms(self) -> list[_BatchNorm]:
        """The batch-norm layers, in order."""
        return [m for m in self.all if isinstance(m, _BatchNorm)]

    @cached_property
    def parameters(self) -> list[nn.Parameter]:
        """Each module's own parameters: a parameter shared by several modules is listed once
        per module that holds it."""
        return [p for m in self.all for p in m._parameters.values() if p is not None]

    @cached_property
    def depth(self) -> int:
        """Levels of nesting, the model itself being the first (every path counts, also through
        a module registered in several places)."""
        depth, level = 0, [self.model]
        while level:  # breadth first: no recursion of our own
            depth += 1
            level = [child for module in level for child in module._modules.values()
                     if child is not None]
        return depth
