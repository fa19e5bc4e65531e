"""clreg on `peft` LoRA models (the real package, a tiny GPT-2 classifier built from a config, nothing downloaded):
EWC, MAS, SI and SOS regularise the LoRA factors and nothing else, in the bare loop and through the Hugging Face
Trainer callback; the frozen base stays as it was; the post-task ω of EWC and MAS equals a one-sample-at-a-time
reference in float64; the callback's penalty holds the adapters near their task-1 anchor (and does not with c = 0);
and examples/lora_continual_lm.py keeps language 1 with EWC and loses it without."""
import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("accelerate")
from transformers import GPT2Config, GPT2ForSequenceClassification, PrinterCallback, Trainer, TrainingArguments  # noqa: E402

from clreg import Regularizer  # noqa: E402
from clreg.importance import persample  # noqa: E402
from clreg.integrations.transformers import ContinualRegularizer  # noqa: E402
from example_scripts import load_example  # noqa: E402

transformers.logging.set_verbosity_error()
logging.getLogger("accelerate").setLevel(logging.ERROR)

HEAD = "base_model.model.score"  # the classifier head peft keeps trainable (modules_to_save): not regularised
CLASSES, VOCAB, LENGTH = 3, 64, 6


def lora_gpt2(seed=0, random_b=False, dtype=torch.float32):
    """A 2-layer GPT-2 classifier from a config with rank-4 LoRA on c_attn and c_proj (attention's and the MLP's),
    the base in `dtype`. peft starts lora_B at 0, where lora_A's gradient is 0; `random_b` draws it at random."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32, num_labels=CLASSES,
                        pad_token_id=0, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_proj"],
                           fan_in_fan_out=True, init_lora_weights=not random_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # (transformers' deprecation of an attribute peft reads)
        return peft.get_peft_model(GPT2ForSequenceClassification(config).to(dtype), lora)


def lora_names(model):
    """The adapters' parameter names, read off the model: 2 layers × (c_attn, attn.c_proj, mlp.c_proj) × (A, B)."""
    return [n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


class Task(torch.utils.data.Dataset):
    """Sequences of filler tokens 10..VOCAB−1 (0 is the pad token), each with one of the task's 3 keywords (tokens
    1, 2, 3 for task 0; 4, 5, 6 for task 1) at a random position; the label says which keyword."""

    def __init__(self, task, n=96, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(10, VOCAB, (n, LENGTH), generator=g)
        self.labels = torch.randint(0, CLASSES, (n,), generator=g)
        self.ids[torch.arange(n), torch.randint(0, LENGTH, (n,), generator=g)] = 1 + CLASSES * task + self.labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}

    def inputs(self):
        return {"input_ids": self.ids, "attention_mask": torch.ones_like(self.ids)}


def logits_of(model):
    return lambda x: model(**x).logits


def per_sample_reference(model, names, inputs, method):
    """ω by one forward per sample: EWC's exact Fisher Σ_y q_y (∇ log q_y)², one backward per label y; MAS
    |∇ ‖q‖²|, q = softmax(logits). Averaged over the samples."""
    params = dict(model.named_parameters())
    params = [params[n] for n in names]
    totals = [torch.zeros_like(p) for p in params]
    model.eval()
    n = len(inputs["input_ids"])
    for i in range(n):
        logits = model(**{k: v[i:i + 1] for k, v in inputs.items()}).logits[0]
        q = logits.softmax(0)
        if method == "fisher":
            for y in range(CLASSES):
                grads = torch.autograd.grad(F.log_softmax(logits, 0)[y], params, retain_graph=True)
                for t, g in zip(totals, grads):
                    t.add_(q[y].detach() * g.square())
        else:
            grads = torch.autograd.grad(q.square().sum(), params)
            for t, g in zip(totals, grads):
                t.add_(g.abs())
    return {name: t / n for name, t in zip(names, totals)}


def assert_equal_to_reference(omega, reference):
    assert omega.keys() == reference.keys()
    for name, expected in reference.items():
        assert float(expected.abs().sum()) > 0, name  # a zero reference would let a zero ω pass
        torch.testing.assert_close(omega[name], expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()),
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("method", ["fisher", "mas", "si", "sos"])
def test_the_regularizer_covers_the_adapters_only(method):
    """The frozen base (requires_grad False) is left out by itself; `heads=` names the head peft made trainable."""
    model = lora_gpt2()
    adapters = lora_names(model)
    assert len(adapters) == 2 * 3 * 2
    assert Regularizer(model, method, heads=(HEAD,)).names == adapters
    head = [n for n in Regularizer(model, method).names if n not in adapters]
    assert head == [f"{HEAD}.modules_to_save.default.weight"]  # without heads=, the head's trainable copy is in
    with pytest.raises(ValueError, match="head prefix 'score' matches no parameter"):
        Regularizer(model, method, heads=("score",))  # the prefix is the peft model's name for it


@pytest.mark.parametrize("method", ["fisher", "mas"])
def test_post_task_omega_equals_a_per_sample_loop(method):
    model = lora_gpt2(random_b=True).double()
    inputs = Task(0, n=7, seed=1).inputs()
    reg = Regularizer(model, method, heads=(HEAD,))
    rules = persample.coverage(model, inputs, logits_of(model), reg.params)
    assert list(rules) == reg.names and "torch.func" not in rules.values()  # LoRA's Linear factors: closed forms
    omega = reg.end_task(inputs, forward=logits_of(model))
    assert_equal_to_reference(omega, per_sample_reference(model, reg.names, inputs, method))


def test_a_bf16_base_keeps_the_adapters_state_in_float32():
    """peft upcasts the adapters of a bf16 base to float32 (autocast_adapter_dtype), and clreg's state and ω follow
    the parameters' dtype; the head peft keeps trainable stays bf16."""
    model = lora_gpt2(random_b=True, dtype=torch.bfloat16)
    reg = Regularizer(model, "fisher", heads=(HEAD,))
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    assert trainable[f"{HEAD}.modules_to_save.default.weight"].dtype == torch.bfloat16
    omega = reg.end_task(Task(0, n=8).inputs(), forward=logits_of(model))
    for tensors in (omega, reg.omega, reg.anchor):
        assert list(tensors) == lora_names(model) and all(t.dtype == torch.float32 for t in tensors.values())
    assert all(torch.isfinite(o).all() and float(o.sum()) > 0 for o in omega.values())


def frozen_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def assert_base_unchanged(model, before):
    after = frozen_state(model)
    assert after.keys() == before.keys() and len(after) > 0
    for name, value in before.items():
        assert torch.equal(after[name], value), name


@pytest.mark.slow
@pytest.mark.parametrize("method, options", [("fisher", {}), ("mas", {}), ("si", {}), ("sos", {"alpha": 1.0})])
def test_two_tasks_in_the_bare_loop(method, options):
    """Two tasks in float64 with `reg.step(optimizer)`: the base is untouched, every adapter gains importance, and for
    EWC and MAS task 2's ω is the reference's at the trained parameters, and Ω = ω₁ + ω₂."""
    model = lora_gpt2().double()
    before = frozen_state(model)
    reg = Regularizer(model, method, c=1.0, heads=(HEAD,), **options)
    omegas = []
    for task in range(2):
        data, other = Task(task, seed=2 * task), Task(task, seed=2 * task + 1)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for epoch in range(2):
            for start in range(0, len(data), 16):
                batch = {k: v[start:start + 16] for k, v in data.inputs().items()}
                optimizer.zero_grad()
                F.cross_entropy(model(**batch).logits, data.labels[start:start + 16]).backward()
                if reg.needs_independent_batch:
                    x, y = {k: v[start:start + 16] for k, v in other.inputs().items()}, other.labels[start:start + 16]
                    reg.before_step(independent_loss=lambda: F.cross_entropy(model(**x).logits, y))
                reg.step(optimizer)
            if task == 1:
                assert float(reg.penalty().detach()) > 0  # task 1's penalty is in force
        omegas.append(reg.end_task(data.inputs(), data.labels, forward=logits_of(model)))
        if method in ("fisher", "mas"):
            assert_equal_to_reference(omegas[-1], per_sample_reference(model, reg.names, data.inputs(), method))
    assert_base_unchanged(model, before)
    assert list(reg.omega) == lora_names(model)
    for name, total in reg.omega.items():
        assert float(total.abs().sum()) > 0, name
        torch.testing.assert_close(total, omegas[0][name] + omegas[1][name], rtol=1e-12, atol=0)


def arguments(out, epochs):
    return TrainingArguments(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=16,
                             learning_rate=1e-2, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, optim="adamw_torch", weight_decay=0.0, lr_scheduler_type="constant", seed=0)


def train_two_tasks(out, c):
    """Task 0 then task 1 with the callback (EWC at strength c): the model, the callback, task 1's Ω and anchor."""
    model = lora_gpt2()
    before = frozen_state(model)
    callback = ContinualRegularizer("fisher", c, heads=(HEAD,), samples=96)
    first = None
    for task in range(2):
        trainer = Trainer(model, arguments(out, epochs=10), train_dataset=Task(task, seed=task), callbacks=[callback])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        if first is None:
            first = copy.deepcopy(callback.reg.omega), copy.deepcopy(callback.reg.anchor)
    assert_base_unchanged(model, before)
    return model, callback, first


@pytest.mark.slow
@pytest.mark.parametrize("method, options", [("fisher", {}), ("mas", {}), ("si", {}), ("sos", {"alpha": 1.0})])
def test_the_trainer_callback_regularises_the_adapters_only(tmp_path, method, options):
    """One task through the Trainer callback (SOS with α = 1 draws its independent minibatches from the training
    dataloader): Ω covers exactly the adapters, each with importance, the anchors are the trained adapters, and the
    frozen base is unchanged."""
    model = lora_gpt2()
    before = frozen_state(model)
    callback = ContinualRegularizer(method, 1.0, heads=(HEAD,), samples=32, **options)
    trainer = Trainer(model, arguments(tmp_path, epochs=2), train_dataset=Task(0), callbacks=[callback])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    assert callback.tasks_done == 1 and list(callback.reg.omega) == lora_names(model)
    params = dict(model.named_parameters())
    for name, omega in callback.reg.omega.items():
        assert float(omega.abs().sum()) > 0, name
        assert torch.equal(callback.reg.anchor[name], params[name].detach())
    assert_base_unchanged(model, before)


def drift(model, omega, anchor):
    """Σ Ω (θ − θ*)² over the adapters: how far, weighted by task 0's importance, they moved from task 0's anchor."""
    params = dict(model.named_parameters())
    return sum(float((o * (params[n].detach() - anchor[n]).square()).sum()) for n, o in omega.items())


@pytest.mark.slow
def test_the_trainer_callback_holds_the_adapters_near_their_anchor(tmp_path):
    """The callback on a LoRA model: Ω covers exactly the adapters, each nonzero; the base is unchanged; task 1
    moves the adapters away from task 0's anchor (weighted by task 0's Ω) far less with the penalty than with c = 0,
    and task 0's loss stays lower."""
    runs = {c: train_two_tasks(tmp_path / str(c), c) for c in (0.0, 100.0)}
    free, held = runs[0.0], runs[100.0]
    for model, callback, (omega, anchor) in (free, held):
        assert list(callback.reg.omega) == lora_names(model) and callback.tasks_done == 2
        assert all(float(o.sum()) > 0 for o in omega.values())
    torch.testing.assert_close(free[2][0], held[2][0])  # task 0 went the same way in both runs
    free_drift, held_drift = drift(free[0], *free[2]), drift(held[0], *held[2])
    assert held_drift < 0.1 * free_drift, (held_drift, free_drift)
    data = Task(0, seed=0)
    losses = {}
    for c, (model, _, _) in runs.items():
        model.eval()
        with torch.no_grad():
            losses[c] = float(F.cross_entropy(model(**data.inputs()).logits, data.labels))
    assert losses[100.0] < losses[0.0] - 0.5, losses


@pytest.mark.slow
def test_the_example_keeps_the_first_language_with_ewc():
    """examples/lora_continual_lm.py as it runs: language 1's loss after task 3 is back near uniform guessing over
    the vocabulary without the penalty (ln 48 = 3.87) and stays near its learnt value with EWC, which still learns
    the later languages well below uniform guessing over their tokens (ln 16 = 2.77)."""
    example = load_example("lora_continual_lm.py")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        plain, ewc = example.run(None), example.run("fisher", example.C)
    assert plain[0][0] < 0.8 and ewc[0][0] < 0.8  # language 1 learnt (its entropy: 0.57)
    assert plain[-1][0] > 4.0  # and forgotten
    assert ewc[-1][0] < 2.0  # kept
    assert max(ewc[-1]) < 2.0 and plain[-1][-1] < 0.8  # every language learnt with EWC; the last one without
