"""clreg's Hugging Face Trainer callback, offline, on a tiny BERT built from a config: after 2 text
classification tasks (generated token data) its parameters, Ω and anchors equal the bare-loop Regularizer's on
the same batches (SI, SOS, EWC, MAS, with and without gradient accumulation, with the Trainer's clipping); the
penalty protects task 1 (it fails with c = 0); training resumed from a Trainer checkpoint continues
identically; and a task's sample is drawn from tokenised batches of different lengths."""
import copy
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import Trainer  # noqa: E402

from clreg import Regularizer  # noqa: E402
from clreg.integrations.samples import take_sample  # noqa: E402
from clreg.integrations.transformers import ContinualRegularizer  # noqa: E402
from example_scripts import load_example  # noqa: E402

transformers.logging.set_verbosity_error()


example = load_example("transformers_continual.py")  # its datasets, model and protocol are the tests' too
Keyword = example.Keyword


def tiny_bert(dropout=0.0, seed=0, hidden=16):
    return example.tiny_bert(seed, hidden, dropout)
logging.getLogger("accelerate").setLevel(logging.ERROR)


def arguments(out, epochs=2, accumulate=1, **extra):
    return example.arguments(out, epochs, gradient_accumulation_steps=accumulate, **extra)


class Recorder:
    """The micro-batches that enter the model in training, grouped by optimiser step, and the callback's B'_t."""

    def __init__(self, model, callback):
        self.steps, self.independent = [], []
        model.register_forward_pre_hook(self._see, with_kwargs=True)
        draw = callback._next_independent

        def recorded(loader):
            batch = draw(loader)
            self.independent.append({k: v.clone() for k, v in batch.items()})
            return batch
        callback._next_independent = recorded

    def _see(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            self.steps.append({k: v.clone() for k, v in kwargs.items()})


def train_tasks(model, callback, datasets, out, **settings):
    recorder = Recorder(model, callback)
    for data in datasets:
        Trainer(model, arguments(out, **settings), train_dataset=data, callbacks=[callback]).train()
    return recorder


def bare_loop(model, datasets, recorder, method, c, accumulate, lr=2e-3, **options):
    """The documented loop on the recorded batches: clip the task gradient as the Trainer does, add ∇R, step."""
    reg = Regularizer(model, method, c, heads=("classifier",), **options)
    steps, independent = iter(recorder.steps), iter(recorder.independent)
    for data in datasets:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        for _ in range(len(data) // 16 // accumulate * 2):  # 2 epochs
            optimizer.zero_grad()
            for _ in range(accumulate):
                (model(**next(steps)).loss / accumulate).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if reg.needs_independent_batch:
                other = next(independent)
                reg.before_step(independent_loss=lambda: model(**other).loss)
            reg.prepare_step()  # adds ∇R to the clipped task gradient
            optimizer.step()
            reg.after_step()
        whole = {"input_ids": data.ids, "attention_mask": torch.ones_like(data.ids)}
        reg.end_task(whole, data.labels, forward=lambda x: model(**x).logits)
    return reg


def tasks():
    return [Keyword(3, n=128, seed=1), Keyword(4, n=128, seed=2)]


def atol(name):
    """Attention's key bias has an exactly zero gradient (softmax ignores a shift shared by all keys): Adam turns
    its rounding-level gradient into steps of up to lr, so there only a looser bound holds."""
    return 1e-4 if name.endswith("key.bias") else 1e-6


@pytest.mark.parametrize("method, c", [("si", 1.0), ("sos", 1.0), ("fisher", 100.0), ("mas", 10.0)])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_callback_equals_the_bare_loop(tmp_path, method, c, accumulate):
    model = tiny_bert()
    start = copy.deepcopy(model)
    callback = ContinualRegularizer(method, c, heads=("classifier",), samples=10_000)
    recorder = train_tasks(model, callback, tasks(), tmp_path, accumulate=accumulate)
    assert len(recorder.steps) == 2 * 2 * 128 // 16
    reg = bare_loop(start, tasks(), recorder, method, c, accumulate)
    assert callback.tasks_done == 2
    trained = dict(model.named_parameters())
    for name, p in start.named_parameters():
        torch.testing.assert_close(trained[name], p, rtol=1e-5, atol=atol(name), msg=lambda m, name=name: f"{name}: {m}")
    for name in reg.names:
        torch.testing.assert_close(callback.reg.omega[name], reg.omega[name], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(callback.reg.anchor[name], reg.anchor[name], rtol=1e-5, atol=atol(name))
    assert not any(n.startswith("classifier") for n in reg.names)
    assert float(sum(o.sum() for o in reg.omega.values())) > 0


@pytest.mark.slow
def test_the_penalty_protects_the_first_task():
    """The example: two tasks, one classification head each (not regularised), a shared encoder. Without the
    penalty (c = 0) task 1's test loss through its own head rises from 0.003 to about 0.7 while task 2 is
    learnt; with EWC it stays where it was and task 2 is learnt too."""
    finetune, ewc = example.run("finetune", 0.0), example.run("fisher", 1e8)
    assert finetune["task 1 before"] < 0.01 and ewc["task 1 before"] < 0.01  # task 1 learnt in both runs
    assert finetune["task 2"] < 0.1 and ewc["task 2"] < 0.3  # and task 2 after it
    assert finetune["task 1 after"] > 0.3  # forgotten without the penalty
    assert ewc["task 1 after"] < 0.02  # kept with it


def test_with_dropout_si_takes_g_t_on_the_steps_own_batches(tmp_path):
    """The model has dropout, so SI's g_t is taken with it off, on the micro-batches of the step: the callback
    sees exactly those (as they enter the model), and each step's g_t is their mean loss's gradient."""
    seen = []

    class Watched(ContinualRegularizer):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            seen.append([b["input_ids"].clone() for b in self._window])
            super().on_pre_optimizer_step(args, state, control, model=model, **kwargs)

    model = tiny_bert(dropout=0.1)
    callback = Watched("si", 1.0, heads=("classifier",))
    recorder = train_tasks(model, callback, [Keyword(3, n=128)], tmp_path, accumulate=2)
    assert len(seen) == 8 and all(len(window) == 2 for window in seen)
    for step, window in enumerate(seen):
        for i, ids in enumerate(window):
            assert torch.equal(ids, recorder.steps[2 * step + i]["input_ids"])
    assert float(sum(o.sum() for o in callback.reg.omega.values())) > 0


@pytest.mark.parametrize("method", ["si", "fisher"])
def test_training_resumed_from_a_checkpoint_continues_identically(tmp_path, method):
    """Task 2 trained in one go, and again resumed from its step-8 checkpoint by a new callback in a new
    Trainer: the same parameters and Ω (the checkpoint carries task 1's Ω and, for SI, task 2's sums so far)."""
    first, second = tasks()
    runs = {}
    for name in ("whole", "resumed"):
        model = tiny_bert()
        callback = ContinualRegularizer(method, 1.0, heads=("classifier",), samples=10_000)
        Trainer(model, arguments(tmp_path / "first"), train_dataset=first, callbacks=[callback]).train()
        out = tmp_path / name
        settings = dict(save_strategy="steps", save_steps=8)
        Trainer(model, arguments(out, **settings), train_dataset=second, callbacks=[callback]).train()
        if name == "resumed":
            model, callback = tiny_bert(seed=1), ContinualRegularizer(method, 1.0, heads=("classifier",), samples=10_000)
            trainer = Trainer(model, arguments(out, **settings), train_dataset=second, callbacks=[callback])
            trainer.train(resume_from_checkpoint=str(out / "checkpoint-8"))
        runs[name] = (model, callback)
    (whole, a), (resumed, b) = runs["whole"], runs["resumed"]
    assert b.tasks_done == 2
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    for name in a.reg.names:
        torch.testing.assert_close(b.reg.omega[name], a.reg.omega[name], rtol=1e-4, atol=1e-9)


def test_a_sample_of_tokenised_batches_of_different_lengths():
    batches = [{"input_ids": torch.tensor([[5, 6, 7], [8, 9, 10]]), "attention_mask": torch.ones(2, 3, dtype=torch.long),
                "labels": torch.tensor([0, 1])},
               {"input_ids": torch.tensor([[11, 12, 13, 14, 15]]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
                "labels": torch.tensor([1])}]
    inputs, labels = take_sample(batches, 3, pad={"input_ids": 1})
    assert inputs["input_ids"].tolist() == [[5, 6, 7, 1, 1], [8, 9, 10, 1, 1], [11, 12, 13, 14, 15]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert labels.tolist() == [0, 1, 1]
    assert set(inputs) == {"input_ids", "attention_mask"}
    inputs, labels = take_sample(batches, 2)
    assert inputs["input_ids"].shape == (2, 3)


def test_a_padded_sample_measures_what_each_sequence_alone_gives():
    """EWC on two sequences padded to one length equals the mean of each measured alone, unpadded: the pad
    tokens are masked out, so the per-sample engine's dict inputs are exact."""
    model = tiny_bert()
    short = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    long = {"input_ids": torch.tensor([[8, 9, 10, 11, 12]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    inputs, _ = take_sample([short, long], 2)
    forward = lambda x: model(**x).logits  # noqa: E731
    together = Regularizer(model, "fisher", heads=("classifier",)).end_task(inputs, forward=forward)
    alone = [Regularizer(model, "fisher", heads=("classifier",)).end_task(x, forward=forward) for x in (short, long)]
    for name, value in together.items():
        torch.testing.assert_close(value, (alone[0][name] + alone[1][name]) / 2, rtol=1e-4, atol=1e-10)


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="head prefix 'head' matches no parameter"):
        Trainer(tiny_bert(), arguments(tmp_path), train_dataset=Keyword(3, n=128),
                callbacks=[ContinualRegularizer("si", heads=("head",))]).train()
    with pytest.raises(ValueError, match="split=False"):
        Trainer(tiny_bert(), arguments(tmp_path), train_dataset=Keyword(3, n=128),
                callbacks=[ContinualRegularizer("sos", split=True)]).train()
    with pytest.raises(ValueError, match="no clreg state in"):
        ContinualRegularizer("si").load(str(tmp_path))


def test_a_causal_lm_is_measured_on_its_next_token_predictions_per_sequence():
    """causal_lm=True: logits [:, :-1] against labels [:, 1:]; batches of different lengths are padded, their
    padded labels −100 unscored; ω (empirical Fisher) equals, per sequence, the square of the gradient of its
    summed next-token losses, each sequence alone."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, n_positions=8,
                                       tie_word_embeddings=False, pad_token_id=0)).double().eval()
    g = torch.Generator().manual_seed(1)
    batches = []
    for length in (5, 7):
        ids = torch.randint(1, 20, (2, length), generator=g)
        mask = torch.ones_like(ids)
        mask[1, length - 2:] = 0
        labels = ids.masked_fill(mask == 0, -100)
        batches.append({"input_ids": ids * mask, "attention_mask": mask, "labels": labels})
    callback = ContinualRegularizer("fisher", causal_lm=True, samples=4, fisher_mode="empirical")
    callback.reg = Regularizer(model, "fisher", mode="empirical")
    omega = callback.end_task(batches)
    params = dict(model.named_parameters())
    expected = {name: torch.zeros_like(p) for name, p in params.items()}
    for batch in batches:
        for i in range(2):
            one = {k: v[i:i + 1] for k, v in batch.items()}
            logits = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits, one["labels"][0, 1:], ignore_index=-100, reduction="sum")
            for (name, p), grad in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
                expected[name] += grad.square() / 4
    for name in expected:
        torch.testing.assert_close(omega[name], expected[name], rtol=1e-9, atol=1e-15)
    assert float(sum(o.sum() for o in omega.values())) > 0
