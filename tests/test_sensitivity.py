"""Post-task measures against the brute-force reference (one backward per sample and label)."""
import pytest
import torch
from torch import nn

from clreg import importance
from clreg.importance import TaskSample
from clreg.importance.persample import per_sample_statistics
from reference import naive_measure


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def assert_close(actual, expected, rtol=1e-9):  # float64 throughout: far below the 1e-6
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("name", ["fisher", "sqrt-fisher", "af", "mas", "mas-logits", "masx", "masx-logits"])
def test_measure_equals_brute_force(name):
    model = tiny_mlp()
    x = torch.randn(7, 5, dtype=torch.double)
    params = list(model.parameters())
    omega = importance.create(name).task_importance(params, TaskSample(model, x))
    assert_close(omega, naive_measure(name, model, params, x))


def test_empirical_fisher_uses_true_labels():
    model = tiny_mlp()
    x, y = torch.randn(6, 5, dtype=torch.double), torch.tensor([0, 1, 2, 2, 1, 0])
    params = list(model.parameters())
    omega = importance.create("fisher", mode="empirical").task_importance(params, TaskSample(model, x, y))
    assert_close(omega, naive_measure("fisher-empirical", model, params, x, y))


def test_sampled_fisher_converges_to_exact():
    model = tiny_mlp()
    x = torch.randn(4, 5, dtype=torch.double)
    params = list(model.parameters())
    exact = importance.create("fisher").task_importance(params, TaskSample(model, x))
    sampled = importance.create("fisher", mode="sampled", draws=20000).task_importance(params, TaskSample(model, x))
    for s, e in zip(sampled, exact):
        torch.testing.assert_close(s, e, rtol=0.05, atol=1e-4)


def test_only_selected_parameters_are_measured():
    model = tiny_mlp()
    x = torch.randn(5, 5, dtype=torch.double)
    params = [model[0].weight, model[2].bias]  # a weight without its bias, a bias without its weight
    omega = importance.create("fisher").task_importance(params, TaskSample(model, x))
    assert_close(omega, naive_measure("fisher", model, params, x))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.conv_same = nn.Conv2d(3, 2, 3, padding="same", bias=False)
        self.norm = nn.LayerNorm(2 * 3 * 3)
        self.seq = nn.Linear(3, 2)  # applied to a (n, 6, 3) input: positional path
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = torch.relu(self.conv_same(h)).flatten(1)
        h = self.norm(h).view(len(x), 6, 3)
        return self.head(torch.tanh(self.seq(h)).flatten(1))


def logit_cotangents(logits, labels):
    """Two cotangents and weights per sample, each a fixed function of that sample's logits."""
    v = torch.stack([torch.tanh(logits), logits.square() - 1])
    w = torch.stack([torch.sigmoid(logits[:, 0]), torch.nn.functional.softplus(logits[:, 1])])
    return v, w


@pytest.mark.parametrize("power", ["square", "abs"])
def test_engine_conv_linear_nd_and_fallback(power):
    torch.manual_seed(1)
    model = ConvNet().double()
    x = torch.randn(5, 2, 6, 6, dtype=torch.double)
    params = list(model.parameters())
    fast = per_sample_statistics(model, params, x, logit_cotangents, power)
    h = torch.square if power == "square" else torch.abs
    expected = [torch.zeros_like(p) for p in params]
    for i in range(5):
        z = model(x[i:i + 1])
        v, w = logit_cotangents(z.detach(), None)
        for k in range(2):
            grads = torch.autograd.grad((model(x[i:i + 1]) * v[k]).sum(), params)
            for e, g in zip(expected, grads):
                e += w[k, 0] * h(g)
    assert_close(fast, expected)
    # a budget that forces one sample per chunk gives the same numbers
    assert_close(per_sample_statistics(model, params, x, logit_cotangents, power, memory_budget=1), expected)


def test_fisher_square_root_reproduces_the_softmax_fisher_even_with_zero_probabilities():
    from clreg.importance.sensitivity import fisher_square_root

    logits = torch.randn(6, 5, dtype=torch.double) * 3
    logits[0, 2] = -1000.0  # q = 0 exactly for one label
    q = logits.softmax(1)
    v = fisher_square_root(q)
    assert v.shape == (4, 6, 5)
    for i in range(6):
        expected = sum(q[i, y] * torch.outer(q[i] - torch.eye(5)[y], q[i] - torch.eye(5)[y]) for y in range(5))
        torch.testing.assert_close(v[:, i].t() @ v[:, i], expected, rtol=1e-10, atol=1e-14)


def test_fisher_with_saturated_softmax_equals_brute_force():
    model = tiny_mlp()
    with torch.no_grad():
        model[2].weight.mul_(300.0)  # near one-hot predictions
    x = torch.randn(5, 5, dtype=torch.double)
    params = list(model.parameters())
    omega = importance.create("fisher").task_importance(params, TaskSample(model, x))
    assert_close(omega, naive_measure("fisher", model, params, x))


def test_a_layer_applied_twice_is_measured_exactly():
    """A Linear that runs twice per forward pass has no closed form: its parameters go to the torch.func path."""
    layer = nn.Linear(3, 3).double()
    model = nn.Sequential(layer, nn.Tanh(), layer)  # the same module twice in the forward pass
    x = torch.randn(4, 3, dtype=torch.double)
    params = list(model.parameters())
    omega = importance.create("mas").task_importance(params, TaskSample(model, x))
    assert_close(omega, naive_measure("mas", model, params, x))


class Encoder(nn.Module):
    """Token classifier on nn.TransformerEncoder: nn.MultiheadAttention applies its projections functionally,
    so neither in_proj_weight nor out_proj (a Linear that never runs as a module) has a per-layer rule."""

    def __init__(self, batch_first=True):
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        self.embed = nn.Embedding(11, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = self.encoder(h if self.batch_first else h.transpose(0, 1))
        return self.head((h if self.batch_first else h.transpose(0, 1)).mean(1))


@pytest.mark.parametrize("name", ["fisher", "sqrt-fisher", "af", "mas", "masx"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_measures_equal_brute_force(name, batch_first):
    model = Encoder(batch_first).double().eval()
    x = torch.randint(0, 11, (6, 5))
    params = list(model.parameters())
    omega = importance.create(name).task_importance(params, TaskSample(model, x))
    assert_close(omega, naive_measure(name, model, params, x))
    assert float(sum(o.sum() for o in omega)) > 0


class Masked(nn.Module):
    """Keyword inputs, and a branch on the mask's values (as Hugging Face models take): not vmap-able. Its
    temperature, a bare parameter, has no per-layer rule: it goes to torch.func, which cannot vmap this forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)
        self.temperature = nn.Parameter(torch.tensor(1.3))

    def forward(self, input_ids, attention_mask):
        h = self.norm(self.embed(input_ids))
        if not bool(attention_mask.all()):  # data-dependent control flow
            h = h * attention_mask.unsqueeze(-1)
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True)) * self.temperature


def test_keyword_inputs_with_data_dependent_control_flow_are_exact():
    model = Masked().double()
    ids = torch.randint(0, 11, (5, 4))
    mask = torch.ones(5, 4, dtype=torch.long)
    mask[1, 2:] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    params = list(model.parameters())
    with pytest.warns(RuntimeWarning, match=r"1 parameter\(s\) \(temperature\) are taken one sample at a time"):
        omega = importance.create("fisher").task_importance(params, TaskSample(model, x))
    assert_close(omega, naive_measure("fisher", model, params, x))
