"""Calls on torch tensors that require grad (with grad mode on).

fastattn has no backward pass yet. Rather than return a result silently cut off from the
autograd graph, such a call records a node whose backward raises, so inference code that
forgets ``torch.no_grad()`` still works and training fails loudly at ``backward()``.
"""

import torch

from . import _fastattn

NO_BACKWARD = (
    "fastattn has no backward pass yet: run inference under torch.no_grad() or "
    "torch.inference_mode(), or use torch's scaled_dot_product_attention to train"
)


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, *tensors):
        return run(*tensors)

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(NO_BACKWARD)


def call(name, args, kwargs=None):
    """``_fastattn.<name>(*args, **kwargs)`` inside a node whose backward raises."""
    fn = getattr(_fastattn, name)
    kwargs = dict(kwargs or {})
    values = list(args) + list(kwargs.values())
    names = list(kwargs)
    positions = [i for i, a in enumerate(values) if isinstance(a, torch.Tensor)]

    def run(*tensors):
        full = list(values)
        for i, t in zip(positions, tensors):
            full[i] = t
        return fn(*full[: len(args)], **dict(zip(names, full[len(args) :])))

    return _NoBackward.apply(run, *[values[i] for i in positions])
