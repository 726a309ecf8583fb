"""Forward and backward passes of C clients' copies of one layer at once, by hand.

Each client c has its own parameters, stacked along a leading axis (a Linear weight of
shape (out, in) becomes W of shape (C, out, in)), and its own mini-batch of B samples.
Activations are client-major, (C, B, *features), except from the first convolution to
the next Flatten, where they stay folded as (B, C * channels, H, W): client c's channels are the c-th
block, so one grouped convolution with groups=C applies each client's filters to its
own samples only. A layer's ``backward`` takes dJ_c/d(output), returns dJ_c/d(input)
and, in the same pass, applies SGD to its parameters in place,

    w_c <- w_c - lr_c * dJ_c/dw_c,

which spares materialising the (C, *w.shape) gradient of the large weights (a Linear's
is folded into one batched matmul, W_c <- W_c - (lr_c g_c)^T h_c). Padding samples
carry zero gradient, and lr_c = 0 leaves client c's parameters exactly as they are.

``compile_layers`` turns a model whose forward is a chain of Linear, Conv2d, ReLU,
MaxPool2d and Flatten modules (as ``torch.fx`` traces it) into these layers, or returns
None for any other model.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

aten = torch.ops.aten


class Linear:
    """z_c = h_c W_c^T + b_c on client-major h of shape (C, B, ..., in); W (C, out, in), b (C, out) or None."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        self.weight, self.bias = weight, bias
        self.params = True

    def forward(self, h: Tensor) -> Tensor:
        self.shape, self.h = h.shape, h.flatten(1, -2)
        z = torch.bmm(self.h, self.weight.transpose(1, 2))  # (baddbmm with a broadcast bias is far slower on CPU)
        if self.bias is not None:
            z += self.bias.unsqueeze(1)
        return z.view(*self.shape[:-1], -1)

    def backward(self, g: Tensor, lr: Tensor, need_input_grad: bool) -> Tensor | None:
        g = g.flatten(1, -2)
        dh = torch.bmm(g, self.weight).view(self.shape) if need_input_grad else None  # before W changes
        scaled = g * lr.view(-1, 1, 1)
        self.weight.baddbmm_(scaled.transpose(1, 2), self.h, alpha=-1.0)
        if self.bias is not None:
            self.bias.sub_(scaled.sum(1))
        self.h = None
        return dh


class Conv2d:
    """Client c's convolution with filters W_c (C, out, in, k, k) and bias b_c, as one
    grouped convolution over the folded input (B, C * in, H, W) -> (B, C * out, H', W')."""

    def __init__(self, weight: Tensor, bias: Tensor | None, module: nn.Conv2d, folded: bool):
        self.weight, self.bias, self.folded = weight, bias, folded
        self.params = True
        self.stride, self.padding, self.dilation = module.stride, module.padding, module.dilation

    def forward(self, h: Tensor) -> Tensor:
        clients = self.weight.shape[0]
        self.shape = h.shape
        if not self.folded:  # client-major (C, B, in, H, W): fold the clients into the channels
            h = h.transpose(0, 1).reshape(h.shape[1], -1, *h.shape[3:])
        self.h = h
        bias = None if self.bias is None else self.bias.reshape(-1)
        return F.conv2d(h, self.weight.flatten(0, 1), bias, self.stride, self.padding, self.dilation, clients)

    def backward(self, g: Tensor, lr: Tensor, need_input_grad: bool) -> Tensor | None:
        clients = self.weight.shape[0]
        bias_sizes = None if self.bias is None else [self.bias.numel()]
        dh, dw, db = aten.convolution_backward(
            g, self.h, self.weight.flatten(0, 1), bias_sizes, self.stride, self.padding, self.dilation,
            False, [0, 0], clients, [need_input_grad, True, self.bias is not None],
        )
        self.weight.sub_(dw.view_as(self.weight).mul_(lr.view(-1, 1, 1, 1, 1)))
        if self.bias is not None:
            self.bias.sub_(db.view_as(self.bias).mul_(lr.view(-1, 1)))
        self.h = None
        if dh is not None and not self.folded:
            dh = dh.view(self.shape[1], self.shape[0], *self.shape[2:]).transpose(0, 1)
        return dh


class ReLU:
    """max(h, 0) elementwise, in any layout."""

    params = False

    def forward(self, h: Tensor) -> Tensor:
        self.out = torch.relu(h)
        return self.out

    def backward(self, g: Tensor, lr: Tensor, need_input_grad: bool) -> Tensor:
        dh, self.out = aten.threshold_backward(g, self.out, 0), None
        return dh


class MaxPool2d:
    """2-d max pooling of every sample and channel, folded or client-major (C, B, ch, H, W)."""

    def __init__(self, module: nn.MaxPool2d, folded: bool):
        self.folded, self.params = folded, False
        pair = nn.modules.utils._pair
        self.kernel, self.stride = pair(module.kernel_size), pair(module.stride or module.kernel_size)
        self.padding, self.dilation, self.ceil_mode = pair(module.padding), pair(module.dilation), module.ceil_mode

    def forward(self, h: Tensor) -> Tensor:
        self.shape = h.shape
        self.h = h if self.folded else h.flatten(0, 1)
        out, self.indices = F.max_pool2d(
            self.h, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode, return_indices=True
        )
        return out if self.folded else out.view(*self.shape[:2], *out.shape[1:])

    def backward(self, g: Tensor, lr: Tensor, need_input_grad: bool) -> Tensor:
        g = g if self.folded else g.flatten(0, 1)
        dh = aten.max_pool2d_with_indices_backward(
            g, self.h, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode, self.indices
        )
        self.h = self.indices = None
        return dh.view(self.shape)


class Flatten:
    """Features flattened to client-major (C, B, F), from folded (B, C * ch, H, W) or (C, B, ...)."""

    def __init__(self, clients: int, folded: bool):
        self.clients, self.folded, self.params = clients, folded, False

    def forward(self, h: Tensor) -> Tensor:
        self.shape = h.shape
        return h.reshape(h.shape[0], self.clients, -1).transpose(0, 1) if self.folded else h.flatten(2)

    def backward(self, g: Tensor, lr: Tensor, need_input_grad: bool) -> Tensor:
        return g.transpose(0, 1).reshape(self.shape) if self.folded else g.reshape(self.shape)


def compile_layers(model: nn.Module, stacked: dict[str, Tensor]) -> list | None:
    """The model as a list of stacked layers over the (C, ...) parameters ``stacked``
    (every parameter of the model, by name), or None when its traced forward is not a
    chain of supported modules: Linear (on client-major activations); Conv2d with
    groups=1 and numeric zero padding; ReLU; MaxPool2d; Flatten of all but the batch
    axis; ending in client-major logits."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # not traceable: data-dependent control flow, unsupported Python, ...
        return None
    nodes = list(graph.nodes)
    if len(nodes) < 3 or nodes[0].op != "placeholder" or nodes[-1].op != "output":
        return None
    clients = next(iter(stacked.values())).shape[0]
    layers, previous, folded = [], nodes[0], False
    for node in nodes[1:-1]:
        if node.op != "call_module" or node.args != (previous,) or node.kwargs:
            return None
        module = model.get_submodule(node.target)
        weight, bias = stacked.get(f"{node.target}.weight"), stacked.get(f"{node.target}.bias")
        if type(module) is nn.Linear and not folded:
            layers.append(Linear(weight, bias))
        elif type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros" and not isinstance(
            module.padding, str
        ):
            layers.append(Conv2d(weight, bias, module, folded))
            folded = True
        elif type(module) is nn.ReLU:
            layers.append(ReLU())
        elif type(module) is nn.MaxPool2d:
            layers.append(MaxPool2d(module, folded))
        elif type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            layers.append(Flatten(clients, folded))
            folded = False
        else:
            return None
        previous = node
    return layers if nodes[-1].args == (previous,) and not folded else None
