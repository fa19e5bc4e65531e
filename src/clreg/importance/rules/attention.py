"""The rule for nn.MultiheadAttention, which applies its four projections as functions (F.linear inside
F.multi_head_attention_forward) rather than through modules whose inputs could be recorded.

While the engine runs, the rule replaces the instance's forward with the same computation written out: the
query, key and value projections, attention in its math form (scaled scores, additive masks, softmax), and the
output projection, keeping each projection's input and output. Each projection is then an affine map whose
per-sample statistics follow as for a Linear (`linear_statistics`); in_proj_weight's three row blocks each have
their own input. The probe checks that the logits are the module's own (`invasive`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clreg.importance.rules.base import Rule, linear_statistics, register


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True: not attended) as an additive one, as nn.MultiheadAttention reads it."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


@register
class MultiheadAttentionRule(Rule):
    """nn.MultiheadAttention without bias_k/bias_v or add_zero_attn; its out_proj's parameters are claimed too."""

    invasive = True

    @classmethod
    def accepts(cls, module):  # noqa: D102
        return isinstance(module, nn.MultiheadAttention) and module.bias_k is None and not module.add_zero_attn

    @classmethod
    def claims(cls, module):  # noqa: D102
        return dict(module.named_parameters())  # its own and out_proj's

    def attach(self) -> None:  # noqa: D102
        self.module.forward = self._forward  # an instance attribute: nn.Module.__call__ runs it in place of the class's

    def detach(self) -> None:  # noqa: D102
        self.module.__dict__.pop("forward", None)
        self.clear()

    def _projection_weights(self) -> tuple[list[Tensor], list[Tensor | None]]:
        m = self.module
        weights = (list(m.in_proj_weight.chunk(3)) if m.in_proj_weight is not None
                   else [m.q_proj_weight, m.k_proj_weight, m.v_proj_weight])
        biases = list(m.in_proj_bias.chunk(3)) if m.in_proj_bias is not None else [None] * 3
        return weights, biases

    def _forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                 average_attn_weights=True, is_causal=False):
        m = self.module
        if is_causal and attn_mask is None:
            raise RuntimeError("nn.MultiheadAttention needs attn_mask when is_causal is given (it is only a hint)")
        if not m.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, width = query.shape
        heads, head_width = m.num_heads, width // m.num_heads
        weights, biases = self._projection_weights()
        inputs = [query, key, value]
        q, k, v = (F.linear(x, w, b) for x, w, b in zip(inputs, weights, biases))

        def split(t: Tensor) -> Tensor:  # (n, positions, width) -> (n, heads, positions, head width)
            return t.reshape(n, t.shape[1], heads, head_width).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(head_width)
        mask = _additive(attn_mask, scores.dtype)
        if mask is not None:
            scores = scores + (mask.view(n, heads, length, -1) if mask.dim() == 3 else mask)
        padding = _additive(key_padding_mask, scores.dtype)
        if padding is not None:
            scores = scores + padding.view(n, 1, 1, -1)
        attention = scores.softmax(-1)
        if m.training and m.dropout > 0:
            attention = F.dropout(attention, m.dropout)
        mixed = (attention @ split(v)).transpose(1, 2).reshape(n, length, width)
        out = F.linear(mixed, m.out_proj.weight, m.out_proj.bias)
        if self.recording:
            self.calls += 1
            self.inputs = [t.detach() for t in (*inputs, mixed)]
            self.outputs = [q, k, v, out]
        if not m.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attention.mean(1) if average_attn_weights else attention

    def per_sample_floats(self) -> int:  # noqa: D102
        return super().per_sample_floats() + sum(t.numel() for t in self.inputs) // self.samples

    def transient_floats(self) -> int:  # noqa: D102
        return max(p.numel() for p in self.module.parameters())  # one projection's per-sample gradient

    def add(self, deltas, power, totals):  # noqa: D102
        m = self.module
        width = m.embed_dim
        for i, (delta, inputs) in enumerate(zip(deltas[:3], self.inputs[:3])):
            rows = slice(i * width, (i + 1) * width)
            if m.in_proj_weight is not None:
                weight = self.total(totals, "in_proj_weight")
                weight = None if weight is None else weight[rows]
            else:
                weight = self.total(totals, ("q_proj_weight", "k_proj_weight", "v_proj_weight")[i])
            bias = self.total(totals, "in_proj_bias")
            linear_statistics(delta, inputs, power, weight, None if bias is None else bias[rows])
        linear_statistics(deltas[3], self.inputs[3], power, self.total(totals, "out_proj.weight"),
                          self.total(totals, "out_proj.bias"))
