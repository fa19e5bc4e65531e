"""The rule for nn.Embedding: a sample's gradient of row r is the sum of δ over the positions where the sample
looks up token r, so the statistic is a grouped sum per (sample, token) followed by h, added into the rows."""
from __future__ import annotations

import torch
from torch import nn

from clreg.importance.rules.base import Rule, power_of, register


@register
class EmbeddingRule(Rule):
    """nn.Embedding without max_norm or scale_grad_by_freq (whose lookups change the weight or its gradient).

    Position embeddings are often looked up once for the whole batch, ids of shape (1, positions), and added
    to every sample by broadcasting; the rule then hands the model that output repeated for each sample, so that
    each sample's δ is its own. That changes how the model computes, so the probe checks the logits stay the
    same (`invasive` for that pass).
    """

    @classmethod
    def accepts(cls, module):  # noqa: D102
        return (isinstance(module, nn.Embedding) and module.max_norm is None and not module.scale_grad_by_freq
                and not module.sparse)

    def record(self, args, kwargs, output):  # noqa: D102
        ids = args[0]
        self.invasive = ids.shape[0] == 1 and self.samples > 1
        if self.invasive:  # one lookup broadcast over the samples
            ids = ids.expand(self.samples, *ids.shape[1:])
            output = output.expand(self.samples, *output.shape[1:]).contiguous()
        self.ids, self.outputs = ids, [output]
        self.groups = None
        return output

    def _keys(self, n: int) -> torch.Tensor:
        """Per lookup, sample · rows + its row: where it lands among the samples' stacked copies of the weight."""
        ids = self.first(self.ids).reshape(n, -1)
        return (torch.arange(n, device=ids.device).unsqueeze(1) * self.module.num_embeddings + ids).reshape(-1)

    def _groups(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per lookup, the index of its (sample, token) group; per group, its row."""
        unique, inverse = torch.unique(self._keys(n), return_inverse=True)
        return inverse, unique % self.module.num_embeddings

    def dense(self, deltas, name):  # noqa: D102
        delta = self.first(deltas[0])
        n, width, rows = delta.shape[0], delta.shape[-1], self.module.num_embeddings
        keys = self._keys(n)
        grads = delta.new_zeros(n * rows, width).index_add_(0, keys, delta.reshape(-1, width)).view(n, rows, width)
        if self.module.padding_idx is not None:
            grads[:, self.module.padding_idx] = 0
        return grads

    def per_sample_floats(self) -> int:  # noqa: D102
        return 2 * super().per_sample_floats()

    def add(self, deltas, power, totals):  # noqa: D102
        weight = self.total(totals, "weight")
        if weight is None:
            return
        delta = self.first(deltas[0])
        n, width = delta.shape[0], delta.shape[-1]
        if self.groups is None:
            self.groups = self._groups(n)
        inverse, rows = self.groups
        sums = delta.new_zeros(len(rows), width).index_add_(0, inverse, delta.reshape(-1, width))
        if self.module.padding_idx is not None:  # its row gets no gradient
            sums[rows == self.module.padding_idx] = 0
        weight.index_add_(0, rows, power_of(sums, power))
