"""What a per-layer rule is: how one module's parameters get their per-sample statistics in closed form.

A rule is attached to one module for the engine's passes. During a forward pass it records what it needs (the
module's inputs) and the tensors whose output cotangents δ it needs (`outputs`); for each cotangent k the engine
gives it δ for those tensors, and the rule adds Σ_x h(per-sample gradient of x) for each of its parameters into
the totals. Rules register themselves (`register`), most specific first; the engine asks each module for the
first rule that accepts it (`rule_for`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def power_of(t: Tensor, power: str) -> Tensor:
    """h(t): square or abs."""
    return t.square() if power == "square" else t.abs()


class Rule:
    """Closed-form per-sample statistics for the parameters of `module` (and of submodules it claims).

    `slots` maps a parameter's name relative to `module` ("weight", "out_proj.bias") to its index in the
    totals. Subclasses record in `outputs` the tensors of one forward pass whose cotangents they need.
    """

    invasive = False  # True: the rule changes how the module computes (the probe checks the logits stay the same)

    def __init__(self, module: nn.Module, slots: dict[str, int]):
        self.module, self.slots = module, slots
        self.names: dict[str, str] = {}  # the same parameters' names in the model (set by the engine)
        self.shared: dict[str, int] = {}  # parameters other modules use too: their slots (the engine sums them)
        self.floats = (0, 0)  # per sample: (per_sample_floats, transient_floats), set by the engine's probe
        self.outputs: list[Tensor] = []
        self.calls = 0
        self.samples = 0  # the number of samples of the pass under way (set by the engine)
        self.sample_dim = 0  # where the samples are in the recorded tensors (the probe finds it: 1 if sequence-first)
        self.recording = True
        self.handles: list = []

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        """Whether this rule can compute the statistics of `module`'s parameters."""
        raise NotImplementedError

    @classmethod
    def claims(cls, module: nn.Module) -> dict[str, nn.Parameter]:
        """The parameters this rule computes, by name relative to `module` (default: the module's own)."""
        return dict(module.named_parameters(recurse=False))

    def attach(self) -> None:
        """Start recording (forward hooks by default)."""
        self.handles.append(self.module.register_forward_hook(self._hook, with_kwargs=True))

    def detach(self) -> None:
        """Stop recording and forget what was recorded."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.clear()

    def start_pass(self, samples: int) -> None:
        """Before a forward pass of `samples` samples."""
        self.clear()
        self.samples = samples

    def clear(self) -> None:
        """Forget the recorded pass."""
        self.outputs, self.calls = [], 0

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if self.recording:
            self.calls += 1
            return self.record(args, kwargs, output)
        return None

    def record(self, args: tuple, kwargs: dict, output):
        """Keep what the statistics need from one call; may return a replacement output."""
        raise NotImplementedError

    def ran_as_expected(self) -> bool:
        """Whether the closed form holds for the pass just made: the module ran once, on samples-first inputs."""
        return (self.calls == 1 and self.sample_dim >= 0
                and all(out.shape[self.sample_dim] == self.samples for out in self.outputs))

    def first(self, t: Tensor) -> Tensor:
        """`t` with the samples' dimension first."""
        return t.movedim(self.sample_dim, 0) if self.sample_dim else t

    def transient_floats(self) -> int:
        """Floats per sample this rule needs on top, while its own statistics are formed (one rule at a time)."""
        return 0

    def per_sample_floats(self) -> int:
        """Floats per sample this rule holds while a chunk is processed (after a pass)."""
        return sum(3 * out.numel() // self.samples for out in self.outputs)

    def add(self, deltas: list[Tensor], power: str, totals: list[Tensor]) -> None:
        """One cotangent's δ (one per entry of `outputs`): add Σ_x h(per-sample gradient) into `totals`."""
        raise NotImplementedError

    def finish(self, power: str, totals: list[Tensor]) -> None:
        """After the last cotangent of a chunk (for rules that accumulate across cotangents)."""

    def dense(self, deltas: list[Tensor], name: str) -> Tensor:
        """This module's share of every sample's gradient of its parameter `name`, (n, *shape), for a parameter
        other modules use too (tied embeddings): the engine adds the shares before h. Rules that cannot give it
        leave such parameters to torch.func."""
        raise NotImplementedError

    @classmethod
    def gives_dense(cls) -> bool:
        """Whether `dense` is implemented."""
        return cls.dense is not Rule.dense

    def total(self, totals: list[Tensor], name: str) -> Tensor | None:
        """The running total of the parameter `name`, or None where it is not measured."""
        return totals[self.slots[name]] if name in self.slots else None


RULES: list[type[Rule]] = []


def register(cls: type[Rule]) -> type[Rule]:
    """Add a rule (usable as a class decorator); rules registered earlier are asked first."""
    RULES.append(cls)
    return cls


def rule_for(module: nn.Module) -> type[Rule] | None:
    """The first registered rule that accepts `module`, or None."""
    return next((cls for cls in RULES if cls.accepts(module)), None)


def linear_gradient(delta: Tensor, inputs: Tensor, transposed: bool = False) -> Tensor:
    """Every sample's weight gradient Σ_p δ_xp ⊗ a_xp, (n, out, in), of an affine map a ↦ W a + b applied at every
    position p of a sample (the positions: every dimension between the samples' and the features').
    `transposed`: the weight is stored (in, out), as in a Hugging Face Conv1D."""
    n = delta.shape[0]
    d = delta.reshape(n, -1, delta.shape[-1])  # (n, positions, out)
    a = inputs.reshape(n, -1, inputs.shape[-1])  # (n, positions, in)
    return torch.bmm(a.transpose(1, 2), d) if transposed else torch.bmm(d.transpose(1, 2), a)


def bias_gradient(delta: Tensor) -> Tensor:
    """Every sample's bias gradient Σ_p δ_xp, (n, out)."""
    return delta.reshape(delta.shape[0], -1, delta.shape[-1]).sum(1)


def linear_statistics(delta: Tensor, inputs: Tensor, power: str, weight: Tensor | None, bias: Tensor | None,
                      transposed: bool = False) -> None:
    """Add Σ_x h(linear_gradient) to `weight` and Σ_x h(bias_gradient) to `bias`."""
    if weight is not None:
        g = linear_gradient(delta, inputs, transposed)
        weight.add_((g.square_() if power == "square" else g.abs_()).sum(0))  # h in place: one gradient held
    if bias is not None:
        bias.add_(power_of(bias_gradient(delta), power).sum(0))

