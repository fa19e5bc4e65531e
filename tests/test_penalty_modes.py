"""Penalties over many tasks (SPEC §4): online, separate and debiased, against the formulas written out."""
import pytest
import torch
from torch import nn

from clreg import QuadraticPenalty

from clreg import Regularizer

C = 0.7


def setup(seed=0, tasks=4, prior=0.0, mode="online", keep_tasks=False):
    """A penalty consolidated over `tasks` random tasks; returns it, the params, and each task's (Λ_t, θ*_t)."""
    torch.manual_seed(seed)
    params = [nn.Parameter(torch.randn(3, 4, dtype=torch.double)), nn.Parameter(torch.randn(5, dtype=torch.double))]
    penalty = QuadraticPenalty(params, c=C, prior=prior, mode=mode, keep_tasks=keep_tasks)
    history = []
    for _ in range(tasks):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        omega = [torch.rand_like(p) + 0.05 for p in params]
        penalty.consolidate(omega, params)
        history.append(([C * o for o in omega], [p.detach().clone() for p in params]))
    return penalty, params, history


def value(penalty, thetas):
    return float(penalty.value_and_grad(thetas)[0])


def quadratic(precisions, centres, thetas):
    return float(sum((lam * (t - c).square()).sum() for lam, c, t in zip(precisions, centres, thetas)))


def random_thetas(params, k):
    return [[torch.randn_like(p) * 3 for p in params] for _ in range(k)]


@pytest.mark.parametrize("prior", [0.0, 0.3])
def test_debiased_equals_online_up_to_a_constant(prior):
    online, params, _ = setup(prior=prior)
    debiased, _, _ = setup(prior=prior, mode="debiased")
    differences = [value(debiased, t) - value(online, t) for t in random_thetas(params, 6)]
    scale = max(abs(value(online, t)) for t in random_thetas(params, 3))
    assert max(differences) - min(differences) <= 1e-6 * scale
    # and the gradients are the same: one penalty anchored at the latest parameters
    for t in random_thetas(params, 2):
        for a, b in zip(online.value_and_grad(t)[1], debiased.value_and_grad(t)[1]):
            torch.testing.assert_close(a.clone(), b.clone(), rtol=1e-9, atol=1e-12)


def test_debiased_centres_follow_the_recursion_of_spec_4():
    prior = 0.3
    penalty, params, history = setup(prior=prior, mode="debiased")
    previous = []
    for t, ((lams, anchors), term) in enumerate(zip(history, penalty.tasks)):
        total = [sum(h[0][i] for h in history[:t + 1]) + prior for i in range(len(params))]
        for i, centre in enumerate(term.centre):
            expected = (total[i] * anchors[i] - sum(lam[i] * c[i] for lam, c in previous)) / lams[i]
            torch.testing.assert_close(centre, expected, rtol=1e-9, atol=1e-9)
        previous.append((lams, term.centre))


def test_separate_is_the_sum_of_per_task_penalties_and_online_double_counts_less():
    separate, params, history = setup(mode="separate", prior=0.2)
    for t in random_thetas(params, 3):
        expected = sum(quadratic(lams, anchors, t) for lams, anchors in history) + 0.2 * sum(float(x.square().sum()) for x in t)
        assert value(separate, t) == pytest.approx(expected, rel=1e-10)
    # two tasks: online keeps Λ_1 at the latest anchor; separate also at its own, earlier one
    online2, params, history2 = setup(tasks=2)
    separate2, _, _ = setup(tasks=2, mode="separate")
    (lam1, anchor1), (_, anchor2) = history2
    for t in random_thetas(params, 3):
        double_counting = quadratic(lam1, anchor1, t) - quadratic(lam1, anchor2, t)
        assert value(separate2, t) - value(online2, t) == pytest.approx(double_counting, rel=1e-10)


def test_dropping_a_task_in_debiased_mode_leaves_exactly_the_other_terms():
    prior = 0.3
    penalty, params, _ = setup(prior=prior, mode="debiased")
    terms = [(term.precision, term.centre) for term in penalty.tasks]
    penalty.drop_task(1)
    for t in random_thetas(params, 3):
        expected = sum(quadratic(lam, c, t) for k, (lam, c) in enumerate(terms) if k != 1)
        expected += prior * sum(float(x.square().sum()) for x in t)
        assert value(penalty, t) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="no penalty term"):
        penalty.drop_task(1)
    online, _, _ = setup()
    with pytest.raises(ValueError, match="debiased"):
        online.drop_task(0)


def test_small_importance_keeps_its_far_centre_and_zero_importance_has_no_term():
    """Λ_T tiny: θ̃_T is far away but Λ_T(θ − θ̃_T) still moves the anchor, exactly as online does;
    Λ_T = 0 (or a centre that would overflow): no term, the old centre stays (SPEC §4)."""
    torch.manual_seed(1)
    params = [nn.Parameter(torch.randn(5, dtype=torch.double))]
    online = QuadraticPenalty(params, c=1.0)
    debiased = QuadraticPenalty(params, c=1.0, mode="debiased")
    first = params[0].detach().clone()
    for penalty in (online, debiased):
        penalty.consolidate([torch.ones(5, dtype=torch.double)], params)
    with torch.no_grad():
        params[0].add_(1.0)
    second = [torch.tensor([1.0, 0.0, 1e-12, 1.0, 1e-320], dtype=torch.double)]
    for penalty in (online, debiased):
        penalty.consolidate(second, params)
    lam, centre = debiased.tasks[1].precision[0], debiased.tasks[1].centre[0]
    assert lam.tolist() == [1.0, 0.0, 1e-12, 1.0, 0.0] and torch.isfinite(centre).all()
    theta = [torch.randn(5, dtype=torch.double)]
    g_online = online.value_and_grad(theta)[1][0].clone()
    g_debiased = debiased.value_and_grad(theta)[1][0].clone()
    kept = [0, 2, 3]
    torch.testing.assert_close(g_debiased[kept], g_online[kept], rtol=1e-6, atol=0)
    # entries 1 and 4: only task 1's term, centred at task 1's anchor, with precision 1
    torch.testing.assert_close(g_debiased[[1, 4]], 2 * (theta[0] - first)[[1, 4]], rtol=1e-12, atol=0)


def test_bad_modes_are_refused_clearly():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="online, separate, debiased"):
        QuadraticPenalty(p, 1.0, mode="sum")
    with pytest.raises(ValueError, match="online penalty only"):
        QuadraticPenalty(p, 1.0, decay=0.9, mode="separate")


def test_proxy_equals_the_loss_increase_where_laplace_is_exact():
    """Task t's loss Σ F_t (θ − μ_t)², trained to its exact minimum with the penalty, ω = F_t, c = 1:
    the proxy's increase since task t ended equals the true loss increase, for every t."""
    torch.manual_seed(2)
    n, tasks, prior = 6, 4, 0.1
    theta = nn.Parameter(torch.zeros(n, dtype=torch.double))
    reg = Regularizer(nn.ParameterList([theta]), "l2", c=1.0, prior=prior, keep_tasks=True)
    fishers = [torch.rand(n, dtype=torch.double) + 0.1 for _ in range(tasks)]
    optima = [torch.randn(n, dtype=torch.double) for _ in range(tasks)]
    losses = [lambda th, f=f, m=m: float((f * (th - m).square()).sum()) for f, m in zip(fishers, optima)]
    at_end, proxies_at_end = [], []
    for t in range(tasks):
        # the exact minimiser of L_t + R: (F_t + P)θ = F_t μ_t + P m (closed form instead of training)
        precision = reg.penalty_term.precision()[0] if t else torch.full((n,), prior, dtype=torch.double)
        centre = reg.penalty_term.centre[0] if t else torch.zeros(n, dtype=torch.double)
        with torch.no_grad():
            theta.copy_((fishers[t] * optima[t] + precision * centre) / (fishers[t] + precision))
        reg.penalty_term.consolidate([fishers[t]], [theta])
        at_end.append(losses[t](theta.detach()))
        proxies_at_end.append(reg.proxy_losses()[t])
    proxies = reg.proxy_losses()
    for t in range(tasks):
        rise = losses[t](theta.detach()) - at_end[t]
        assert proxies[t] - proxies_at_end[t] == pytest.approx(rise, rel=1e-9, abs=1e-12)
