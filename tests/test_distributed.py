"""The Regularizer under DistributedDataParallel, two CPU processes (gloo): each rank trains on its half of
every batch and measures on its half of the task's sample; the parameters and Ω equal one process's on the
whole batches and the whole sample (SI; SIU and SOS with α = 1, which take a gradient on an independent
minibatch; EWC and MAS, measured on each rank's share). And `clreg run --nproc 2` trains as one process."""
import datetime
import json
import os
import subprocess
import sys

import numpy as np

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from clreg import Regularizer
from ddp_exit import leave

BATCH, STEPS, SAMPLE = 16, 6, 40


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def data(task):
    g = torch.Generator().manual_seed(task)
    x = torch.randn(STEPS * BATCH, 6, generator=g)
    w = torch.randn(6, 3, generator=g)
    other = torch.randn(STEPS * BATCH, 6, generator=g)
    return x, (x @ w).argmax(1), other, (other @ w).argmax(1)


def train(net, reg, rank=0, ranks=1):
    """2 tasks; this rank's share of every batch (all of it in one process), Adam through reg.step."""
    for task in range(2):
        x, y, xo, yo = data(task)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        share = BATCH // ranks
        for step in range(STEPS):
            mine = slice(step * BATCH + rank * share, step * BATCH + (rank + 1) * share)
            optimizer.zero_grad()
            F.cross_entropy(net(x[mine]), y[mine]).backward()
            if reg.needs_independent_batch:
                reg.before_step(independent_loss=lambda: F.cross_entropy(reg.model(xo[mine]), yo[mine]))
            reg.step(optimizer)
        part = SAMPLE // ranks
        reg.end_task(x[rank * part:(rank + 1) * part], y[rank * part:(rank + 1) * part])


OPTIONS = {"sos": {"alpha": 1.0}}


def worker(rank, method, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))  # a rank that fails stops the other
    try:
        torch.set_num_threads(1)
        net = nn.parallel.DistributedDataParallel(model())
        reg = Regularizer(net, method, c=1.0, **OPTIONS.get(method, {}))
        train(net, reg, rank, 2)
        if rank == 0:
            torch.save({"params": [p.detach() for p in reg.model.parameters()], "omega": reg.omega},
                       os.path.join(folder, "result.pt"))
        dist.barrier()  # both ranks done before either tears down
        del net, reg  # (DDP's C++ reducer still holds the group after this: tests/ddp_exit.py)
    finally:
        dist.destroy_process_group()
    leave()  # (tests/ddp_exit.py: why not a plain return)


@pytest.mark.parametrize("method", ["si", "siu", "sos", "fisher", "mas"])
def test_two_processes_equal_one(tmp_path, method):
    mp.start_processes(worker, args=(method, str(tmp_path)), nprocs=2, start_method="spawn")
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    net = model()
    reg = Regularizer(net, method, c=1.0, **OPTIONS.get(method, {}))
    assert reg.needs_independent_batch == (method in ("siu", "sos"))
    train(net, reg)
    for mine, theirs in zip(net.parameters(), result["params"]):
        torch.testing.assert_close(theirs, mine.detach(), rtol=1e-5, atol=1e-6)
    for name, omega in reg.omega.items():
        assert float(omega.sum()) > 0
        torch.testing.assert_close(result["omega"][name], omega, rtol=1e-5, atol=1e-9)


def small_config(method, **overrides):
    from clreg.train.config import RunConfig

    settings = dict(benchmark="permuted-digits", method=method, c=10.0, tasks=2, epochs=2, batch_size=31,
                    hidden=(20,), samples=50, device="cpu")
    settings.update(overrides)
    return RunConfig.from_dict(settings)


@pytest.mark.parametrize("method", ["si", "siu", "fisher"])
def test_the_trainer_in_two_processes_equals_one(method):
    """`clreg run --nproc 2`'s engine: the accuracy matrix and the loss curve of one process, with batches of
    31 split 15/16 (the weighting makes the averaged gradient the whole batch's mean)."""
    from clreg.train.nproc import launch
    from clreg.train.loop import run

    config = small_config(method)
    one = run(config, progress=False)
    two = launch(config, 2, progress=False)
    np.testing.assert_allclose(two["accuracy_matrix"], one["accuracy_matrix"], atol=1e-9)
    assert two["accuracy_matrix"][1][1] > 0.5
    np.testing.assert_allclose(two["loss_curve"]["loss"], one["loss_curve"]["loss"], rtol=1e-4)


def test_nproc_from_the_command_line(tmp_path):
    out = tmp_path / "r.json"
    command = os.path.join(os.path.dirname(sys.executable), "clreg")
    result = subprocess.run([command, "run", "--benchmark", "permuted-digits", "--method", "ewc",
                             "--c", "10", "--tasks", "2", "--epochs", "1", "--hidden", "20", "--samples", "50",
                             "--device", "cpu", "--nproc", "2", "--quiet", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["processes"] == 2 and len(record["accuracy_matrix"]) == 2
    assert (tmp_path / "r.steps.jsonl").stat().st_size > 0


def sharded_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.Tanh(), nn.Linear(12, 3))


def fully_sharded_model():
    """sharded_model() with each Linear and the whole model under fully_shard (call within a process group)."""
    from torch.distributed.fsdp import fully_shard

    net = sharded_model()
    for layer in (net[0], net[3]):
        fully_shard(layer)
    fully_shard(net)
    return net


def fsdp_worker(rank, method, options, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        torch.set_num_threads(1)
        net = fully_sharded_model()
        reg = Regularizer(net, method, c=1.0, **options)
        train(net, reg, rank, 2)
        params = [p.full_tensor() for p in net.parameters()]
        torch.save({"params": params, "omega": reg.omega, "shapes": [tuple(p.shape) for p in net.parameters()]},
                   os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


SHARDED = {"fisher": ("fisher", {}), "fisher-sampled": ("fisher", {"mode": "sampled", "draws": 2}), "si": ("si", {}),
           "sos": ("sos", {}), "mas": ("mas", {})}


@pytest.mark.parametrize("case", SHARDED)
def test_fully_shard_in_two_processes_equals_one(tmp_path, case):
    """FSDP2: each rank holds its shard of every parameter, and of Ω and θ* (plain tensors shaped like the local
    shard); the step runs on the shards, the trajectory statistics on the reduce-scattered gradients, the post-task
    measures on each rank's share of the sample, summed and cut into the shards (the sampled Fisher's labels
    drawn per sample row, as one process draws them). After 2 tasks the parameters and Ω (the two ranks' shards
    put together) equal one process's on the whole batches and the whole sample."""
    method, options = SHARDED[case]
    mp.start_processes(fsdp_worker, args=(method, options, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    net = sharded_model()
    reg = Regularizer(net, method, c=1.0, **options)
    train(net, reg)
    for mine, theirs in zip(net.parameters(), ranks[0]["params"]):
        torch.testing.assert_close(theirs, mine.detach(), rtol=1e-5, atol=1e-6)
    for name, omega in reg.omega.items():
        shards = [r["omega"][name] for r in ranks]
        assert shards[0].shape[0] < omega.shape[0]  # each rank holds a part
        assert float(omega.sum()) > 0
        torch.testing.assert_close(torch.cat(shards), omega, rtol=1e-5, atol=1e-9)


def fsdp_refusal_worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        from torch.distributed.fsdp import fully_shard

        net = sharded_model()
        fully_shard(net)
        messages = []
        for method, options in (("siu", {}), ("sos", {"alpha": 1.0})):
            try:
                Regularizer(net, method, c=1.0, **options)
                messages.append("accepted")
            except ValueError as err:
                messages.append(str(err))
        reg = Regularizer(net, "fisher", c=1.0)
        try:
            reg.penalty()
            messages.append("accepted")
        except ValueError as err:
            messages.append(str(err))
        if rank == 0:
            with open(os.path.join(folder, "messages.txt"), "w") as f:
                f.write("\n".join(messages))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_under_fully_shard_what_is_not_supported_is_refused_by_name(tmp_path):
    mp.start_processes(fsdp_refusal_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    siu, sos, penalty = (tmp_path / "messages.txt").read_text().split("\n")
    assert "'siu' takes g'_t on an independent minibatch" in siu and "fully_shard" in siu
    assert "'sos' takes g'_t" in sos
    assert "reg.step(optimizer)" in penalty and "add_penalty_gradient" in penalty


def per_parameter_state(state):
    """The per-parameter lists of a Regularizer's state_dict (SI, online penalty), by name."""
    return {"omega": state["penalty"]["omega"], "anchor": state["penalty"]["anchor"],
            "start": state["task"]["start"], "state": state["task"]["state"]}


def local_state(reg):
    """The same lists as this rank holds them (plain tensors shaped like its shards)."""
    return per_parameter_state({"penalty": reg.penalty_term.state_dict(), "task": reg.measure.task_state_dict()})


def fsdp_checkpoint_worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        torch.set_num_threads(1)

        def sharded_pair():
            net = fully_sharded_model()
            return net, Regularizer(net, "si", c=1.0)

        net, reg = sharded_pair()
        train(net, reg, rank, 2)
        x, y, _, _ = data(2)  # the third task, 3 steps in: the path integral's sums are part of the checkpoint
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        for step in range(3):
            optimizer.zero_grad()
            F.cross_entropy(net(x[step * BATCH + rank * 8:step * BATCH + rank * 8 + 8]),
                            y[step * BATCH + rank * 8:step * BATCH + rank * 8 + 8]).backward()
            reg.step(optimizer)
        dcp.save({"model": get_model_state_dict(net), "reg": reg.state_dict()}, checkpoint_id=f"{folder}/checkpoint")
        whole = {key: [t.full_tensor() for t in ts] for key, ts in per_parameter_state(reg.state_dict()).items()}
        mine = {key: [t.clone() for t in ts] for key, ts in local_state(reg).items()}

        resumed_net, resumed = sharded_pair()  # a fresh pair, resumed on 2 ranks through the checkpoint
        state = {"model": get_model_state_dict(resumed_net), "reg": resumed.state_dict()}
        dcp.load(state, checkpoint_id=f"{folder}/checkpoint")
        set_model_state_dict(resumed_net, state["model"])
        resumed.load_state_dict(state["reg"])
        from_whole_net, from_whole = sharded_pair()  # and one given the whole tensors, as one process saves them
        from_whole.load_state_dict({"penalty": {**reg.state_dict()["penalty"], "omega": whole["omega"],
                                                "anchor": whole["anchor"], "centre": whole["anchor"]},
                                    "measure": reg.state_dict()["measure"],
                                    "task": {"start": whole["start"], "state": whole["state"],
                                             "steps": reg.measure.steps}})
        found = {f"{how} {key}": max(float((a - b).abs().max()) for a, b in zip(mine[key], ts))
                 for how, other in (("resumed", resumed), ("from whole", from_whole))
                 for key, ts in local_state(other).items()}
        found["steps"] = [resumed.measure.steps, from_whole.measure.steps, reg.measure.steps]
        if rank == 0:
            torch.save({"whole": whole, "found": found}, os.path.join(folder, "checkpoint.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # torch says so even with no_dist
def test_a_fully_sharded_checkpoint_resumes_on_two_ranks_and_in_one_process(tmp_path):
    """Under fully_shard, Regularizer.state_dict gives DTensors cut as the parameters (uneven shards included):
    torch.distributed.checkpoint saves them, and they load back into a fresh sharded Regularizer on 2 ranks and
    into one unsharded process, equal to the state saved; a sharded Regularizer also takes the whole tensors."""
    import torch.distributed.checkpoint as dcp

    mp.start_processes(fsdp_checkpoint_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key, difference in saved["found"].items():
        assert difference == [3, 3, 3] if key == "steps" else difference == 0, key
    net = sharded_model()
    reg = Regularizer(net, "si", c=1.0)
    state = {"model": net.state_dict(), "reg": reg.state_dict()}
    dcp.load(state, checkpoint_id=str(tmp_path / "checkpoint"), no_dist=True)
    net.load_state_dict(state["model"])
    reg.load_state_dict(state["reg"])
    for key, tensors in per_parameter_state(reg.state_dict()).items():
        assert float(saved["whole"][key][0].abs().sum()) > 0, key
        for mine, theirs in zip(tensors, saved["whole"][key]):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert reg.measure.steps == 3
