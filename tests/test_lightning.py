"""clreg's Lightning callback against the bare-loop Regularizer: the same parameters, Ω and anchors after a
2-task run (same seed, same batches) for SI, SOS and EWC, also with gradient accumulation; a fit resumed from
a Lightning checkpoint continues identically; the penalty protects task 1 (it fails with c = 0)."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")
from clreg import Regularizer  # noqa: E402
from clreg.integrations.lightning import ContinualRegularizer  # noqa: E402


class Classifier(L.LightningModule):
    def __init__(self, lr=0.01):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def tasks(count=2, n=96):
    generator = torch.Generator().manual_seed(0)
    out = []
    for t in range(count):
        x = torch.randn(n, 8, generator=generator)
        w = torch.randn(8, 3, generator=generator)
        out.append(DataLoader(TensorDataset(x, (x @ w).argmax(1)), batch_size=16, shuffle=False))
    return out


def fit(module, loader, callback, epochs=2, **trainer_args):
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                        **trainer_args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on dataloader workers
        trainer.fit(module, loader)
    return trainer


def bare_loop(module, loaders, method, c, epochs=2, accumulate=1, **options):
    """The documented loop: backward, add_penalty_gradient, optimizer.step, after_step; end_task on a sample."""
    reg = Regularizer(module, method, c, **options)
    for loader in loaders:
        optimizer = module.configure_optimizers()
        for _ in range(epochs):
            batches = list(loader)
            for start in range(0, len(batches), accumulate):
                window = batches[start:start + accumulate]
                for x, y in window:
                    (F.cross_entropy(module(x), y) / accumulate).backward()
                reg.prepare_step()
                optimizer.step()
                reg.after_step()
                optimizer.zero_grad()
        sample = torch.cat([x for x, _ in loader])[:64]
        reg.end_task(sample)
    return reg


def assert_same(callback, reg, module, reference):
    for a, b in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for name in reg.names:
        torch.testing.assert_close(callback.reg.omega[name], reg.omega[name], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(callback.reg.anchor[name], reg.anchor[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method, c", [("si", 1.0), ("sos", 1.0), ("fisher", 10.0)])
@pytest.mark.parametrize("accumulate", [1, 3])
def test_callback_equals_the_bare_loop(method, c, accumulate):
    torch.manual_seed(0)
    module = Classifier()
    reference = copy.deepcopy(module)
    loaders = tasks()
    callback = ContinualRegularizer(method, c, samples=64)
    for loader in loaders:
        fit(module, loader, callback, accumulate_grad_batches=accumulate)
    reg = bare_loop(reference, loaders, method, c, accumulate=accumulate)
    assert callback.tasks_done == 2
    assert float(sum(o.sum() for o in reg.omega.values())) > 0
    assert_same(callback, reg, module, reference)


@pytest.mark.slow
@pytest.mark.parametrize("method, c", [("si", 1.0), ("fisher", 10.0)])
def test_lightnings_ddp_strategy_equals_one_process(tmp_path, method, c):
    """2 CPU processes under strategy="ddp", each with half of every task as its batch and its half as its
    sample: the parameters and Ω of one process with the whole task as batch and sample."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "lightning_ddp_script.py"
    done = subprocess.run([sys.executable, str(script), method, str(c), str(tmp_path / "ddp.pt")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "ddp.pt", weights_only=True)
    torch.manual_seed(0)
    reference = Classifier()
    reg = Regularizer(reference, method, c)
    for task in tasks():
        x, y = task.dataset.tensors
        optimizer = reference.configure_optimizers()
        for _ in range(2):  # epochs of one step
            F.cross_entropy(reference(x), y).backward()
            reg.prepare_step()
            optimizer.step()
            reg.after_step()
            optimizer.zero_grad()
        reg.end_task(x)
    for theirs, mine in zip(result["params"], reference.parameters()):
        torch.testing.assert_close(theirs, mine.detach(), rtol=1e-5, atol=1e-6)
    for name in reg.names:
        assert float(reg.omega[name].sum()) > 0
        torch.testing.assert_close(result["omega"][name], reg.omega[name], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("method", ["si", "fisher"])
def test_a_fit_resumed_from_a_lightning_checkpoint_continues_identically(tmp_path, method):
    loaders = tasks()
    torch.manual_seed(0)
    whole = Classifier()
    resumed = copy.deepcopy(whole)
    straight = ContinualRegularizer(method, 1.0, samples=64)
    fit(whole, loaders[0], straight)
    fit(whole, loaders[1], straight, epochs=4)

    callback = ContinualRegularizer(method, 1.0, samples=64)
    fit(resumed, loaders[0], callback)
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = L.Trainer(max_epochs=2, callbacks=[callback, saver], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    callback.end_task_on_train_end = False  # interrupted mid-task: no task end yet
    trainer.fit(resumed, loaders[1])  # 2 of the task's 4 epochs, then a checkpoint
    assert callback.reg.measure.trajectory is False or callback.reg.measure.steps == 12

    fresh_module = Classifier()  # a new process: new module, new callback, state from the checkpoint only
    fresh = ContinualRegularizer(method, 1.0, samples=64)
    trainer = L.Trainer(max_epochs=4, callbacks=[fresh], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(fresh_module, loaders[1], ckpt_path=str(tmp_path / "last.ckpt"))
    assert fresh.tasks_done == 2
    for a, b in zip(fresh_module.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for name in straight.reg.names:
        torch.testing.assert_close(fresh.reg.omega[name], straight.reg.omega[name], rtol=1e-5, atol=1e-9)


def test_the_penalty_protects_the_first_task():
    loaders = tasks()

    def first_task_accuracy(c):
        torch.manual_seed(0)
        module = Classifier(lr=0.03)
        callback = ContinualRegularizer("fisher", c, samples=96)
        for loader in loaders:
            fit(module, loader, callback, epochs=15)
        x, y = loaders[0].dataset.tensors
        return float((module(x).argmax(1) == y).float().mean())

    protected, unprotected = first_task_accuracy(100.0), first_task_accuracy(0.0)
    assert protected > unprotected + 0.15


def test_measures_that_need_a_loss_say_so():
    module = Classifier()
    with pytest.raises(ValueError, match="needs an independent minibatch each step: give ContinualRegularizer"):
        fit(module, tasks(1)[0], ContinualRegularizer("siu", 1.0))
    with pytest.raises(ValueError, match="sos with split=True"):
        fit(module, tasks(1)[0], ContinualRegularizer("sos", 1.0, split=True))


def test_callback_equals_the_bare_loop_in_bf16_mixed_precision():
    torch.manual_seed(0)
    module = Classifier()
    reference = copy.deepcopy(module)
    loaders = tasks()
    callback = ContinualRegularizer("si", 1.0)
    for loader in loaders:
        fit(module, loader, callback, precision="bf16-mixed")
    reg = Regularizer(reference, "si", 1.0)
    for loader in loaders:  # the same loop under CPU autocast, as Lightning's bf16-mixed plugin runs it
        optimizer = reference.configure_optimizers()
        for _ in range(2):
            for x, y in loader:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(reference(x), y)
                loss.backward()
                reg.prepare_step()
                optimizer.step()
                reg.after_step()
                optimizer.zero_grad()
        reg.end_task()
    assert_same(callback, reg, module, reference)


def test_a_step_the_float16_scaler_skips_adds_nothing():
    """A batch that overflows in float16: the AMP scaler skips its step, and so does the statistic (SI's sum
    stays finite and equals the loop that skips the same step)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    module = Classifier()
    reference = copy.deepcopy(module)
    loader = tasks(1)[0]
    loader.dataset.tensors[0][20] = 1e6  # in the second batch
    callback = ContinualRegularizer("si", 1.0, end_task_on_train_end=False)
    plugin = MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
    fit(module, loader, callback, epochs=1, plugins=[plugin])
    assert callback.reg.measure.steps == len(loader) - 1 and plugin.scaler.get_scale() == 2.0 ** 15

    reg, scaler = Regularizer(reference, "si", 1.0), torch.amp.GradScaler("cpu")
    optimizer = reference.configure_optimizers()
    for x, y in loader:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(reference(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        finite = all(torch.isfinite(p.grad).all() for p in reference.parameters())
        reg.prepare_step()
        scaler.step(optimizer)
        scaler.update()
        reg.after_step() if finite else reg.skip_step()
        optimizer.zero_grad()
    assert all(torch.isfinite(s).all() for s in callback.reg.measure.state)
    for a, b in zip(callback.reg.measure.state, reg.measure.state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_the_example_protects_earlier_tasks():
    from example_scripts import load_example

    example = load_example("lightning_permuted_digits.py")
    finetune, ewc = example.run("finetune", 0.0, epochs=3), example.run("fisher", 100.0, epochs=3)
    assert ewc[-1][0] > finetune[-1][0] + 0.1  # task 1 after task 3: kept by EWC, forgotten without it
