"""The Fisher estimators of docs/algorithms.md §3 ("Fisher estimators") against brute-force loops (one backward pass
per batch, per sequence, per label sequence), sequence models' logits (n, T, C), and the Squisher against the
optimiser's own second moment and against SOS."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clreg import Regularizer, importance
from clreg.importance import TaskSample
from clreg.importance.sensitivity import batch_bounds


def assert_close(actual, expected, rtol=1e-9):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=1e-12)


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


class TinySequence(nn.Module):
    """Token ids (n, T) to logits (n, T, C), the tokens of a sequence mixed (an embedding takes the engine's
    torch.func fallback, the Linear layers on (n, T, ·) inputs its positional closed form)."""

    def __init__(self, vocabulary=6, width=4, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.mix = nn.Linear(width, 5)
        self.out = nn.Linear(5, classes)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.embedding(ids)))
        return self.out(h + h.mean(1, keepdim=True))


def tiny_sequence():
    torch.manual_seed(0)
    return TinySequence().double()


def fisher(mode, params, sample, **options):
    return importance.create("fisher", mode=mode, **options).task_importance(params, sample)


def batch_reference(model, params, x, y, bounds):
    """(1/B) Σ_batches (∇ mean cross-entropy of the batch)², one autograd call per batch."""
    total = [torch.zeros_like(p) for p in params]
    for start, stop in bounds:
        grads = torch.autograd.grad(F.cross_entropy(model(x[start:stop]), y[start:stop]), params)
        for t, g in zip(total, grads):
            t += g.square()
    return [t / len(bounds) for t in total]


def test_batches_are_whole_runs_of_b_the_rest_left_out():
    assert batch_bounds(10, 3) == [(0, 3), (3, 6), (6, 9)]
    assert batch_bounds(9, 3) == [(0, 3), (3, 6), (6, 9)]
    assert batch_bounds(2, 5) == [(0, 2)]  # fewer samples than b: one batch of all of them
    assert batch_bounds(4, 1) == [(0, 1), (1, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize("n, b", [(10, 3), (8, 4), (3, 5)])
def test_batched_fisher_equals_a_loop_over_batches(n, b):
    model = tiny_mlp()
    x, y = torch.randn(n, 5, dtype=torch.double), torch.randint(0, 3, (n,))
    params = list(model.parameters())
    omega = fisher("batched", params, TaskSample(model, x, y), batch=b)
    assert_close(omega, batch_reference(model, params, x, y, batch_bounds(n, b)))


def test_batched_fisher_with_batches_of_one_is_the_empirical_fisher():
    model = tiny_mlp()
    x, y = torch.randn(7, 5, dtype=torch.double), torch.randint(0, 3, (7,))
    params = list(model.parameters())
    assert_close(fisher("batched", params, TaskSample(model, x, y), batch=1),
                 fisher("empirical", params, TaskSample(model, x, y)))
    model = tiny_sequence()  # and for sequences, whose loss is the sum of their token losses
    ids, labels = torch.randint(0, 6, (5, 4)), torch.randint(0, 3, (5, 4))
    labels[2, 1:] = -100
    params = list(model.parameters())
    assert_close(fisher("batched", params, TaskSample(model, ids, labels), batch=1),
                 fisher("empirical", params, TaskSample(model, ids, labels)))


def test_batched_fisher_through_the_regularizer_and_its_options():
    model = tiny_mlp()
    x, y = torch.randn(9, 5, dtype=torch.double), torch.randint(0, 3, (9,))
    reg = Regularizer(model, "fisher", fisher_mode="batched", fisher_batch=4)
    assert reg.measure.options() == {"mode": "batched", "batch": 4}
    omega = reg.end_task(x, y)
    expected = batch_reference(model, list(model.parameters()), x, y, [(0, 4), (4, 8)])
    assert_close(list(omega.values()), expected)
    sqrt = Regularizer(model, "sqrt-fisher", fisher_mode="batched", fisher_batch=4).end_task(x, y)
    assert_close(list(sqrt.values()), [e.sqrt() for e in expected])


def test_batched_fisher_errors():
    model = tiny_mlp()
    with pytest.raises(ValueError, match="true labels: pass them"):
        fisher("batched", list(model.parameters()), TaskSample(model, torch.randn(4, 5, dtype=torch.double)))
    with pytest.raises(ValueError, match="fisher_batch must be >= 1"):
        importance.create("fisher", fisher_mode="batched", fisher_batch=0)
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        importance.Fisher(mode="batched", batch=0)


def joint_fisher_reference(model, params, ids, labels):
    """The Fisher of each sequence's joint label distribution Π_t q_t(y_t), tokens labelled -100 not scored:
    Σ over every label sequence y of q(y) · (∇ log q(y))², one autograd call per label sequence. `model` maps a
    sequence's index to its logits (T, C), or is a module taking ids."""
    total = [torch.zeros_like(p) for p in params]
    logits = model if not isinstance(model, nn.Module) else (lambda i: model(ids[i:i + 1])[0])
    for i in range(len(labels)):
        log_q = F.log_softmax(logits(i), -1)
        scored = [t for t in range(labels.shape[1]) if labels[i, t] != -100]
        for ys in itertools.product(range(log_q.shape[1]), repeat=len(scored)):
            log_joint = sum(log_q[t, y] for t, y in zip(scored, ys))
            for s, g in zip(total, torch.autograd.grad(log_joint, params, retain_graph=True)):
                s += log_joint.exp().detach() * g.square()
    return [t / len(labels) for t in total]


def sequence_loss_reference(model, params, ids, labels):
    """(1/n) Σ_sequences (∇ Σ_t −log q_t(y_t))², the tokens labelled -100 left out: one autograd call per sequence.
    `model` as for joint_fisher_reference."""
    total = [torch.zeros_like(p) for p in params]
    logits = model if not isinstance(model, nn.Module) else (lambda i: model(ids[i:i + 1])[0])
    for i in range(len(labels)):
        loss = F.cross_entropy(logits(i), labels[i], reduction="sum", ignore_index=-100)
        for s, g in zip(total, torch.autograd.grad(loss, params)):
            s += g.square()
    return [t / len(labels) for t in total]


def sequence_sample():
    ids, labels = torch.randint(0, 6, (4, 3)), torch.randint(0, 3, (4, 3))
    labels[1, 2] = labels[3, 0] = -100  # padding
    return ids, labels


def test_sequence_exact_fisher_is_the_fisher_of_the_joint_label_distribution():
    model = tiny_sequence()
    params = list(model.parameters())
    ids, labels = sequence_sample()
    assert_close(fisher("exact", params, TaskSample(model, ids, labels)),
                 joint_fisher_reference(model, params, ids, labels))
    every = torch.zeros_like(labels)  # without labels every token counts
    assert_close(fisher("exact", params, TaskSample(model, ids)), joint_fisher_reference(model, params, ids, every))


def test_sequence_empirical_fisher_squares_the_gradient_of_the_summed_token_losses():
    model = tiny_sequence()
    params = list(model.parameters())
    ids, labels = sequence_sample()
    expected = sequence_loss_reference(model, params, ids, labels)
    assert_close(fisher("empirical", params, TaskSample(model, ids, labels)), expected)
    per_token = [torch.zeros_like(p) for p in params]  # the sum of squared token gradients: a different quantity
    for i in range(len(ids)):
        for t in range(ids.shape[1]):
            if labels[i, t] != -100:
                loss = F.cross_entropy(model(ids[i:i + 1])[0, t], labels[i, t])
                for s, g in zip(per_token, torch.autograd.grad(loss, params)):
                    s += g.square() / len(ids)
    assert any(not torch.allclose(a, b) for a, b in zip(expected, per_token))


def test_sequence_batched_fisher_equals_a_loop_over_batches():
    model = tiny_sequence()
    params = list(model.parameters())
    ids, labels = torch.randint(0, 6, (7, 3)), torch.randint(0, 3, (7, 3))
    labels[0, 1] = -100
    expected = [torch.zeros_like(p) for p in params]
    for start in (0, 3):  # batches of 3, the 7th sequence left out
        losses = [F.cross_entropy(model(ids[i:i + 1])[0], labels[i], reduction="sum", ignore_index=-100)
                  for i in range(start, start + 3)]
        for s, g in zip(expected, torch.autograd.grad(sum(losses) / 3, params)):
            s += g.square() / 2
    assert_close(fisher("batched", params, TaskSample(model, ids, labels), batch=3), expected)


def test_sequence_sampled_fisher_squares_the_gradient_of_each_drawn_sequence(monkeypatch):
    """k draws per token, each draw's tokens one label sequence: (1/n)(1/k) Σ_x Σ_j (∇ Σ_t −log q_t(y_tj))², with the
    engine's draws recorded and the reference written out per sequence and draw."""
    model = tiny_sequence()
    params = list(model.parameters())
    ids, labels = sequence_sample()
    from clreg.importance.sensitivity import Fisher

    drawn, draw = [], Fisher.draw

    def recording(self, q):
        drawn.append(draw(self, q))
        return drawn[-1]
    monkeypatch.setattr(Fisher, "draw", recording)
    omega = fisher("sampled", params, TaskSample(model, ids, labels), draws=3)
    draws = torch.cat(drawn)  # the engine's chunks in order, (n, T, k)
    expected = [torch.zeros_like(p) for p in params]
    for i in range(len(ids)):
        for j in range(3):
            target = torch.where(labels[i] == -100, -100, draws[i, :, j])
            loss = F.cross_entropy(model(ids[i:i + 1])[0], target, reduction="sum", ignore_index=-100)
            for s, g in zip(expected, torch.autograd.grad(loss, params)):
                s += g.square() / (3 * len(ids))
    assert_close(omega, expected)
    padding = torch.full_like(labels, -100)  # nothing scored: nothing drawn
    assert all(float(o.abs().sum()) == 0 for o in fisher("sampled", params, TaskSample(model, ids, padding), draws=3))


@pytest.mark.slow
def test_sequence_sampled_fisher_converges_to_the_exact():
    model = tiny_sequence()
    params = list(model.parameters())
    ids, labels = sequence_sample()
    exact = fisher("exact", params, TaskSample(model, ids, labels))
    sampled = fisher("sampled", params, TaskSample(model, ids, labels), draws=20000)
    for s, e in zip(sampled, exact):
        torch.testing.assert_close(s, e, rtol=0.05, atol=1e-4)


def test_sequence_logits_errors():
    model = tiny_sequence()
    params = list(model.parameters())
    ids, labels = sequence_sample()
    with pytest.raises(ValueError, match="shaped like the logits without their class dimension"):
        fisher("empirical", params, TaskSample(model, ids, labels[:, 0]))
    with pytest.raises(ValueError, match="use fisher_mode='sampled'"):
        importance.create("af").task_importance(params, TaskSample(model, ids, labels))
    with pytest.raises(ValueError, match="measured by the Fisher family"):
        importance.create("mas").task_importance(params, TaskSample(model, ids))


def adam_task(reg, model, optimizer, steps=4, seed=1):
    """A few steps through the bare loop's reg.step; returns each step's task gradient (the penalty is not in
    force in the first task)."""
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(steps):
        x, y = torch.randn(8, 5, generator=generator, dtype=torch.double), torch.randint(0, 3, (8,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        reg.step(optimizer)
    return grads


@pytest.mark.parametrize("bias_correction", [True, False])
def test_squisher_is_adams_second_moment(bias_correction):
    """ω = Adam's exp_avg_sq, divided by 1 − β₂ᵗ with bias correction, against the moving average written out."""
    model = tiny_mlp()
    reg = Regularizer(model, "squisher", squisher_bias_correction=bias_correction)
    beta2 = 0.99
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, beta2))
    grads = adam_task(reg, model, optimizer)
    omega = reg.end_task()
    for i, (name, p) in enumerate(model.named_parameters()):
        v = torch.zeros_like(p)
        for g in grads:
            v = beta2 * v + (1 - beta2) * g[i].square()
        expected = v / (1 - beta2 ** len(grads)) if bias_correction else v
        torch.testing.assert_close(omega[name], expected, rtol=1e-10, atol=1e-15)
        state = optimizer.state[p]
        torch.testing.assert_close(omega[name], state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
                                   if bias_correction else state["exp_avg_sq"], rtol=0, atol=0)


def test_squisher_is_the_square_of_sos_on_the_first_task():
    """Without penalty, dropout or weight decay (the first task), Adam's v and SOS's (α = 0) follow the same gradients
    with the same β₂: bias-corrected Squisher = SOS's ω², ω_SOS being √v̂ (docs/algorithms.md §3, "Squisher")."""
    omegas = {}
    for method in ("squisher", "sos"):
        model = tiny_mlp()
        reg = Regularizer(model, method)
        adam_task(reg, model, torch.optim.Adam(model.parameters(), lr=1e-2), steps=5)
        omegas[method] = reg.end_task()
    for name, v in omegas["squisher"].items():
        torch.testing.assert_close(v, omegas["sos"][name].square(), rtol=1e-9, atol=1e-15)


def test_squisher_takes_the_optimiser_given_to_end_task_and_says_what_is_missing():
    model = tiny_mlp()
    reg = Regularizer(model, "squisher")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 5, dtype=torch.double), torch.randint(0, 3, (8,))
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        reg.prepare_step()
        optimizer.step()
        reg.after_step()
    with pytest.raises(ValueError, match="pass optimizer= to end_task or use reg.step"):
        reg.end_task()  # step() never saw the optimiser
    omega = reg.end_task(optimizer=optimizer)
    p = model[0].weight
    torch.testing.assert_close(omega["0.weight"], optimizer.state[p]["exp_avg_sq"] / (1 - 0.999 ** 2))
    assert reg.optimizer is None  # each task's optimiser is forgotten at its end
    sgd = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    reg.step(sgd)
    with pytest.raises(ValueError, match="has no exp_avg_sq"):
        reg.end_task()


def test_squisher_through_the_trainer():
    """clreg's own loop steps with reg.step(optimizer): the Squisher reads that optimiser at each task's end."""
    from clreg.benchmarks import permuted_digits
    from clreg.train import loop as train
    from clreg.train.config import RunConfig

    config = RunConfig(benchmark="permuted-digits", method="squisher", c=1.0, tasks=2, epochs=1, batch_size=64,
                       hidden=[20], device="cpu")
    trainer = train.Trainer(config, permuted_digits(num_tasks=2, seed=0), progress=False)
    seen = []
    end_task = trainer.reg.end_task

    def recorded(*args, **kwargs):
        state = trainer.optimizer.state[trainer.reg.params[0]]
        seen.append(state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"])))
        return end_task(*args, **kwargs)
    trainer.reg.end_task = recorded
    trainer.run()
    assert len(seen) == 2
    torch.testing.assert_close(trainer.reg.last_importance[trainer.reg.names[0]], seen[1], rtol=0, atol=0)


def test_a_hugging_face_token_classifier_is_measured_per_sequence():
    """BERT for token classification, logits (n, T, C), right-padded sequences whose pad tokens are labelled -100:
    exact, empirical and batched against the per-sequence loops, each sequence run alone (with its own padding)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=8, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(config).double().eval()
    ids, mask = torch.randint(1, 20, (4, 4)), torch.ones(4, 4, dtype=torch.long)
    mask[1, 3:] = mask[3, 2:] = 0
    labels = torch.where(mask == 1, torch.randint(0, 2, (4, 4)), -100)
    inputs = {"input_ids": ids, "attention_mask": mask}
    forward = lambda x: model(**x).logits  # noqa: E731
    alone = lambda i: forward({k: v[i:i + 1] for k, v in inputs.items()})[0]  # noqa: E731
    params = [p for name, p in model.named_parameters() if not name.startswith("classifier")]
    sample = TaskSample(model, inputs, labels, forward)
    assert_close(fisher("exact", params, sample), joint_fisher_reference(alone, params, ids, labels), rtol=1e-7)
    assert_close(fisher("empirical", params, sample), sequence_loss_reference(alone, params, ids, labels), rtol=1e-7)
    expected = [torch.zeros_like(p) for p in params]
    for start in (0, 2):
        losses = F.cross_entropy(forward({k: v[start:start + 2] for k, v in inputs.items()}).flatten(0, 1),
                                 labels[start:start + 2].flatten(), reduction="sum", ignore_index=-100)
        for e, g in zip(expected, torch.autograd.grad(losses / 2, params)):
            e += g.square() / 2
    assert_close(fisher("batched", params, sample, batch=2), expected, rtol=1e-7)


def test_squisher_through_the_hugging_face_trainer(tmp_path):
    """The callback hands the Trainer's optimiser to the Regularizer: ω is its exp_avg_sq, bias-corrected."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import Trainer
    from clreg.integrations.transformers import ContinualRegularizer
    from test_transformers import Keyword, arguments, tiny_bert

    model = tiny_bert()
    callback = ContinualRegularizer("squisher", heads=("classifier",), keep_importance=True)
    trainer = Trainer(model, arguments(tmp_path, epochs=1), train_dataset=Keyword(3, n=64), callbacks=[callback])
    trainer.train()
    omega = callback.reg.last_importance
    parameters = dict(model.named_parameters())
    assert set(omega) == {name for name in parameters if not name.startswith("classifier")}
    for name, value in omega.items():
        state = trainer.optimizer.state[parameters[name]]
        assert float(state["step"]) == 4
        torch.testing.assert_close(value, state["exp_avg_sq"] / (1 - 0.999 ** 4), rtol=0, atol=0)


def test_a_vectorised_job_refuses_squisher_and_says_why():
    """A stacked job keeps no per-run Adam state for squisher to read: it must refuse before training."""
    from clreg.train.config import RunConfig
    from clreg.vectorized.trainer import why_not

    assert "optimiser state" in why_not(RunConfig(benchmark="permuted-digits", method="squisher"))
    assert why_not(RunConfig(benchmark="permuted-digits", method="fisher")) is None


def test_sampled_draws_depend_on_the_sample_not_on_its_chunks_or_ranks():
    """Each sample's labels come from its row in the whole sample: chunked, or split between ranks (a rank's
    draws starting at its offset), they are the same draws; and they follow q (a seeded frequency check)."""
    from clreg.importance.sensitivity import Fisher

    q = torch.softmax(torch.randn(6, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    whole = Fisher(mode="sampled", draws=2, seed=7)
    whole.start_draws()
    expected = whole.draw(q)
    chunked = Fisher(mode="sampled", draws=2, seed=7)
    chunked.start_draws()
    assert torch.equal(torch.cat([chunked.draw(q[:2]), chunked.draw(q[2:5]), chunked.draw(q[5:])]), expected)
    second_rank = Fisher(mode="sampled", draws=2, seed=7)
    second_rank.start_draws(first_row=3)
    assert torch.equal(second_rank.draw(q[3:]), expected[3:])
    many = Fisher(mode="sampled", draws=20000, seed=1)
    many.start_draws()
    frequency = torch.nn.functional.one_hot(many.draw(q[:1, :1]), 5).double().mean(2)[0, 0]
    torch.testing.assert_close(frequency, q[0, 0], atol=0.015, rtol=0)
