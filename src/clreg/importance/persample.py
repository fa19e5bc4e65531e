"""Per-sample gradient statistics without per-sample backward passes.

For inputs x_1..x_n and per-sample output cotangents v_xk with weights w_xk (k = 1..K, e.g. one per
label for the Fisher), this computes for each parameter

    Σ_x Σ_k w_xk · h(J_θ(x)ᵀ v_xk),   h = square or abs,

that is, a weighted sum of a function of *per-sample* gradients. Each module's parameters go to the first
per-layer rule that accepts the module (`clreg.importance.rules`: Linear and Hugging Face Conv1D, Conv2d,
Embedding, LayerNorm/RMSNorm and their look-alikes, nn.MultiheadAttention). One backward pass per cotangent runs
down to the recorded layer outputs only; each rule turns those output cotangents δ into its parameters'
statistics in closed form; a parameter several modules use (tied embeddings) sums their dense per-sample shares
before h. Any other parameter and a module whose rule's closed form does not hold (found by the probe: a layer
applied twice, a sequence-first layout, a rule that would change the logits) go to `torch.func` (vmap of grad
over samples, `fallback.py`).
Inputs are a tensor or a dict of tensors with a common sample dimension (a Hugging Face model's keyword inputs).
Samples are processed in chunks that keep the working memory under a budget.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from clreg.core import shards
from clreg.core.device import memory_budget as device_budget
from clreg.importance import inputs as model_inputs
from clreg.importance.inputs import Inputs
from clreg.importance.fallback import FallbackGradients
from clreg.importance.rules import Rule, power_of, rule_for

# (logits (n, C), labels (n,) or None) -> cotangents (K, n, C) and weights (K, n)
Cotangents = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]


class _Pass:
    """The rules' recording around one forward pass of `samples` samples."""

    def __init__(self, rules: list[Rule], forward: Callable[[Inputs], Tensor]):
        self.rules, self.forward = rules, forward

    def __call__(self, x: Inputs) -> Tensor:
        samples = model_inputs.check_inputs(x)
        for rule in self.rules:
            rule.start_pass(samples)
        with torch.enable_grad():
            return self.forward(x)


class _Accumulator:
    """Runs one chunk of samples through the model and adds its statistics to `totals`."""

    def __init__(self, rules: list[Rule], shared: list[_Shared], fallback: FallbackGradients,
                 forward: Callable[[Inputs], Tensor], power: str, totals: list[Tensor]):
        self.rules, self.shared, self.fallback, self.power, self.totals = rules, shared, fallback, power, totals
        self.run_pass = _Pass(rules, forward)

    def run(self, x: Inputs, labels: Tensor | None, cotangents: Cotangents) -> None:
        logits = self.run_pass(x)
        for rule in self.rules:
            if not rule.ran_as_expected():  # as the probe found: once, samples first
                raise ValueError(f"{type(rule.module).__name__} {rule.module!r} ran {rule.calls} times in one "
                                 "forward pass, or on inputs whose first dimension is not the samples', unlike in "
                                 "the first passes: the model's control flow depends on its inputs")
        v, w = cotangents(logits.detach(), labels)
        # fold the weights into the cotangents: w·δ² = (√w·δ)², w·abs(δ) = abs(w·δ) for w ≥ 0
        v = v * (w.sqrt() if self.power == "square" else w).unsqueeze(-1).to(v.dtype)
        outputs = [out for rule in self.rules for out in rule.outputs]
        for k in range(v.shape[0]):
            deltas = iter(torch.autograd.grad(logits, outputs, v[k], retain_graph=True) if outputs else [])
            of = {id(rule): [next(deltas) for _ in rule.outputs] for rule in self.rules}
            for rule in self.rules:
                rule.add(of[id(rule)], self.power, self.totals)
            for entry in self.shared:  # the modules' shares summed per sample, then h
                grads = sum(rule.dense(of[id(rule)], name) for rule, name in entry.users)
                self.totals[entry.slot].add_(power_of(grads, self.power).sum(0).view_as(self.totals[entry.slot]))
        for rule in self.rules:
            rule.finish(self.power, self.totals)
        if self.fallback.names:
            for rule in self.rules:
                rule.clear()
                rule.recording = False
            try:
                self.fallback.add(x, v)
            finally:
                for rule in self.rules:
                    rule.recording = True
        for rule in self.rules:
            rule.clear()
        del logits, outputs


@dataclass
class _Shared:
    """A parameter that several modules use (tied embeddings): every sample's gradient is the sum of each
    module's share (`Rule.dense`), formed before h."""

    slot: int
    name: str
    users: list[tuple[Rule, str]]  # (rule, the parameter's name in its module)


def _plan(model: nn.Module, params: list[Tensor]) -> tuple[list[Rule], dict[int, str], list[_Shared]]:
    """Assign each wanted parameter to a per-layer rule, to several (a shared parameter whose every user has a
    rule that gives dense per-sample shares), or to the torch.func fallback."""
    index = {id(p): i for i, p in enumerate(params)}
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"{len(missing)} of the parameters to measure do not belong to the model")
    rules, claimed, users = [], set(), {}
    for m in model.modules():
        cls = rule_for(m)
        claims = cls.claims(m) if cls is not None else {}
        tied = {name for name, p in claims.items() if owners[id(p)] > 1}
        if tied and not cls.gives_dense():
            continue
        wanted = {name: p for name, p in claims.items() if id(p) in index and (id(p) not in claimed or name in tied)}
        if not wanted:
            continue
        rule = cls(m, {name: index[id(p)] for name, p in wanted.items() if name not in tied})
        rule.shared = {name: index[id(p)] for name, p in wanted.items() if name in tied}
        rule.names = {name: names[id(p)] for name, p in wanted.items()}
        rules.append(rule)
        claimed.update(id(p) for p in claims.values())
        for name in rule.shared:
            users.setdefault(id(wanted[name]), []).append((rule, name))
    shared = [_Shared(index[pid], names[pid], found) for pid, found in users.items()]
    fallback = {index[id(p)]: names[id(p)] for p in params if id(p) not in claimed}
    every_holder = lambda entry: len(entry.users) == owners[id(params[entry.slot])]  # noqa: E731
    return rules, fallback, _keep_shared(shared, every_holder, fallback)


def _keep_shared(shared: list[_Shared], keep: Callable[[_Shared], bool], fallback: dict[int, str]) -> list[_Shared]:
    """The shared parameters `keep` accepts; the others go to `fallback`, and their users forget them."""
    kept = [entry for entry in shared if keep(entry)]
    for entry in shared:
        if entry not in kept:
            fallback[entry.slot] = entry.name
            for rule, name in entry.users:
                rule.shared.pop(name, None)
    return kept


def _probe(rules: list[Rule], fallback: dict[int, str], forward: Callable[[Inputs], Tensor], inputs: Inputs,
           n: int) -> list[Rule]:
    """Run one sample, then two, through the model and hand to the torch.func fallback every rule whose closed
    form would not hold: its module did not run exactly once (attention's output projection applied as a
    function runs zero times; a layer applied twice, twice), its outputs do not have the samples first (a
    sequence-first layout keeps its first dimension when the number of samples changes), or the rule's own
    check failed. Where rules change how the model computes (`invasive`), the logits must stay the model's
    own, or those rules go to the fallback too. Gradients on, as in the real passes: a fast path that skips
    modules without them is not taken."""
    good = {id(rule): True for rule in rules}
    first_shapes: dict[int, torch.Size] = {}
    run_pass = _Pass(rules, forward)
    for size in (1, 2) if n > 1 else (1,):
        x = model_inputs.take(inputs, 0, size)
        try:
            logits = run_pass(x).detach()
        except RuntimeError:  # an invasive rule the model does not tolerate (an in-place op on a broadcast)
            logits = None
        last = size == 2 or n == 1
        for rule in rules:
            shape = rule.outputs[0].shape if rule.outputs else None
            if size == 2:
                rule.sample_dim = _sample_dim(first_shapes[id(rule)], shape)
            first_shapes[id(rule)] = shape
            good[id(rule)] &= logits is not None and (rule.ran_as_expected() if last else rule.calls == 1)
            if last and good[id(rule)]:
                rule.floats = (rule.per_sample_floats(), rule.transient_floats())  # sizes the chunks
        for rule in _changing_logits(rules, forward, x, logits) if last else ():  # (a broadcast repeats at 2)
            good[id(rule)] = False
    kept = []
    for rule in rules:
        rule.clear()
        if good[id(rule)]:
            kept.append(rule)
            continue
        rule.detach()
        fallback.update({slot: rule.names[name] for name, slot in rule.slots.items()})  # (shared ones: _keep_shared)
    return kept


def _sample_dim(one: torch.Size | None, two: torch.Size | None) -> int:
    """The dimension that holds the samples: the only one that changed, from 1 to 2, when the samples did; -1
    (never the samples') where there is none."""
    if one is None or two is None or len(one) != len(two):
        return -1
    changed = [d for d, (a, b) in enumerate(zip(one, two)) if a != b]
    return changed[0] if len(changed) == 1 and (one[changed[0]], two[changed[0]]) == (1, 2) else -1


def _changing_logits(rules: list[Rule], forward: Callable[[Inputs], Tensor], x: Inputs,
                     logits: Tensor | None) -> list[Rule]:
    """The invasive rules of the pass just made that change the logits `x` gives: none where the logits are the
    model's own (every rule detached); otherwise each is tried alone."""
    invasive = [rule for rule in rules if rule.invasive]
    if not invasive:
        return []
    own = _logits_with(rules, [], forward, x)
    if _same(own, logits):
        return []
    return [rule for rule in invasive if not _same(own, _logits_with(rules, [rule], forward, x))]


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    return (a is not None and b is not None and a.shape == b.shape
            and torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max())))


def _logits_with(rules: list[Rule], attached: list[Rule], forward: Callable[[Inputs], Tensor], x: Inputs) -> Tensor | None:
    """The logits of `x` with only the rules `attached` attached (None where the forward fails with them)."""
    for rule in rules:
        rule.detach()
    try:
        for rule in attached:
            rule.attach()
        return _Pass(attached, forward)(x).detach()
    except RuntimeError:
        return None
    finally:
        for rule in rules:
            rule.detach()
            rule.attach()


def per_sample_statistics(model: nn.Module, params: list[Tensor], inputs: Inputs, cotangents: Cotangents,
                          power: str, labels: Tensor | None = None,
                          forward: Callable[[Tensor], Tensor] | None = None,
                          memory_budget: int | None = None) -> list[Tensor]:
    """Σ_x Σ_k w_xk · h(per-sample gradient), h = `power` ("square" or "abs"), per parameter.

    `cotangents(logits, labels)` gives the output cotangents v (K, n, C) and weights w (K, n) for a
    chunk; the per-sample gradient for (x, k) is J_θ(x)ᵀ v_xk. `memory_budget` (bytes; default 1 GiB on the
    CPU, half the free memory of a GPU) bounds the
    chunk of samples processed at once. The model should be in eval mode.
    """
    if power not in ("square", "abs"):
        raise ValueError(f"power must be 'square' or 'abs', got {power!r}")
    n = model_inputs.check_inputs(inputs)
    if n == 0:
        raise ValueError("per_sample_statistics needs at least one sample")
    forward = forward or default_forward(model, inputs)
    totals = [shards.full_shape_zeros(p) for p in params]  # a sharded parameter's whole shape: every rank adds its share
    with _planned(model, params, forward, inputs, n) as (rules, fallback, shared):
        functional = FallbackGradients(model, forward, fallback, params, lambda g: power_of(g, power), totals)
        accumulator = _Accumulator(rules, shared, functional, forward, power, totals)
        chunk = _chunk_size(rules, shared, params, fallback, memory_budget or device_budget(params[0].device))
        for start in range(0, n, chunk):
            stop = start + chunk
            accumulator.run(model_inputs.take(inputs, start, stop), None if labels is None else labels[start:stop],
                            cotangents)
    return totals


@contextmanager
def _planned(model: nn.Module, params: list[Tensor], forward: Callable[[Inputs], Tensor], inputs: Inputs, n: int):
    """The rules that hold for this model and input, attached, the fallback's parameters (slot -> name), and the
    shared parameters."""
    rules, fallback, shared = _plan(model, params)
    for rule in rules:
        rule.attach()
    try:
        kept = _probe(rules, fallback, forward, inputs, n)
        alive = {id(rule) for rule in kept}
        shared = _keep_shared(shared, lambda entry: all(id(rule) in alive for rule, _ in entry.users), fallback)
        sharded = [name for slot, name in fallback.items() if shards.is_sharded(params[slot])]
        if sharded:
            raise ValueError(f"under fully_shard every measured parameter needs a per-layer rule (torch.func cannot "
                             f"re-run a sharded model); these have none: {', '.join(sharded[:4])}"
                             f"{' and more' if len(sharded) > 4 else ''} (clreg.importance.persample.coverage)")
        yield kept, fallback, shared
    finally:
        for rule in rules:
            rule.detach()


def coverage(model: nn.Module, inputs: Inputs, forward: Callable[[Inputs], Tensor] | None = None,
             params: list[Tensor] | None = None) -> dict[str, str]:
    """How the engine computes each parameter's per-sample statistics on these inputs: the name of its
    per-layer rule, or "torch.func" for the fallback. For checking that a model runs on closed forms only."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    n = model_inputs.check_inputs(inputs)
    with _planned(model, params, forward or default_forward(model, inputs), inputs, min(n, 2)) as (rules, fallback,
                                                                                                 shared):
        found = {name: type(rule).__name__ for rule in rules for name in rule.names.values()}
        found.update({entry.name: "+".join(type(rule).__name__ for rule, _ in entry.users) for entry in shared})
        found.update({name: "torch.func" for name in fallback.values()})
    return found


def default_forward(model: nn.Module, inputs: Inputs) -> Callable[[Inputs], Tensor]:
    """model(x) for a tensor, model(**x) for a dict of keyword inputs; the result must be the logits."""
    def logits(x: Inputs) -> Tensor:
        out = model(x) if isinstance(x, Tensor) else model(**x)
        if not isinstance(out, Tensor):
            raise ValueError(f"{type(model).__name__} returns a {type(out).__name__}, not a tensor of logits: pass "
                             "forward=, e.g. forward=lambda x: model(**x).logits")
        return out
    return logits


def _chunk_size(rules: list[Rule], shared: list[_Shared], params: list[Tensor], fallback: dict[int, str],
                budget: int) -> int:
    """Samples per chunk so that the working memory stays under `budget` bytes (as the probe's passes measured)."""
    transient = max([rule.floats[1] for rule in rules] + [2 * params[entry.slot].numel() for entry in shared],
                    default=0)
    floats = sum(rule.floats[0] for rule in rules) + transient
    floats += sum(3 * params[slot].numel() for slot in fallback)
    return max(1, budget // max(1, params[0].element_size() * floats))
