"""The CIFAR network, multi-head routing, and importance measures through one head."""
import pytest
import torch
import torch.nn.functional as F

from clreg import Regularizer
from clreg.importance import TaskSample
from clreg.models.build import CifarNet, MultiHead, build_model, task_forward
from reference import naive_measure


def small_cnn(tasks=3, classes=4, dtype=torch.float32):
    torch.manual_seed(0)
    return build_model("cifar-cnn", (3, 8, 8), [3, 4, 6], [classes] * tasks, torch.Generator().manual_seed(1)).to(dtype)


def test_cifar_network_matches_spec_layout():
    net = CifarNet((3, 32, 32), out_features=10)
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes == [(32, 3, 3, 3), (32,), (32, 32, 3, 3), (32,), (64, 32, 3, 3), (64,), (64, 64, 3, 3), (64,),
                      (512, 4096), (512,), (10, 512), (10,)]
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.25, 0.25, 0.5]
    assert all(float(b.detach().abs().max()) == 0 for n, b in net.named_parameters() if n.endswith("bias"))
    bound = (6 / (3 * 9 + 32 * 9)) ** 0.5  # Glorot-uniform for the first conv: fan_in 27, fan_out 288
    assert 0.9 * bound < float(net[0].weight.detach().abs().max()) <= bound
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_a_task_batch_depends_only_on_the_body_and_its_head():
    model = small_cnn().eval()
    x, y = torch.rand(5, 3, 8, 8), torch.randint(0, 4, (5,))
    loss = F.cross_entropy(model(x, 1), y)
    loss.backward()
    assert model.heads[0].weight.grad is None and model.heads[2].weight.grad is None
    assert model.heads[1].weight.grad.abs().sum() > 0 and model.body[0].weight.grad.abs().sum() > 0
    with torch.no_grad():  # changing the other heads changes nothing
        model.heads[0].weight.add_(1.0)
        model.heads[2].bias.add_(1.0)
    assert torch.equal(F.cross_entropy(model(x, 1), y), loss.detach())
    with torch.no_grad():
        model.heads[1].bias.add_(1.0)
        model.heads[1].weight.mul_(2.0)
    assert not torch.equal(F.cross_entropy(model(x, 1), y), loss.detach())


def test_per_sample_task_ids_route_like_one_task_per_batch():
    model = small_cnn().eval()
    x, task = torch.rand(6, 3, 8, 8), torch.tensor([2, 0, 1, 2, 0, 0])
    mixed = model(x, task)
    for t in range(3):
        torch.testing.assert_close(mixed[task == t], model(x[task == t], t))
    with pytest.raises(ValueError, match="task id 3 out of range: the model has 3 heads"):
        model(x, 3)


def test_heads_get_no_penalty_and_are_not_regularised():
    model = small_cnn()
    reg = Regularizer(model, "l2", c=1.0, heads=("heads",))
    assert all(n.startswith("body.") for n in reg.names) and len(reg.params) == 10
    reg.end_task()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    assert float(reg.penalty().detach()) == pytest.approx(0.25 * sum(p.numel() for p in reg.params), rel=1e-5)
    with pytest.raises(ValueError, match="head prefix 'head' matches no parameter"):
        Regularizer(model, "l2", heads=("head",))


@pytest.mark.parametrize("name", ["fisher", "mas", "af"])
def test_measures_through_one_head_equal_brute_force(name):
    model = small_cnn(dtype=torch.float64).eval()
    reg = Regularizer(model, name, heads=("heads",))
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    omega = reg.measure.task_importance(reg.params, TaskSample(model, x, forward=task_forward(model, 2)))
    expected = naive_measure(name, task_forward(model, 2), reg.params, x)
    for a, e in zip(omega, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_multi_head_needs_a_body_output_width():
    body = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    model = MultiHead(body, [torch.nn.Linear(3, 2), torch.nn.Linear(3, 5)])
    assert model(torch.rand(2, 4), 1).shape == (2, 5)
    with pytest.raises(ValueError, match="a batch mixing tasks needs heads of one size"):
        model(torch.rand(2, 4), torch.tensor([0, 1]))
