"""Per-layer rules of the per-sample engine (`clreg.importance.persample`): one file per kind of layer, each
registering itself. A module no rule accepts, or whose rule's closed form does not hold in the probe, goes to
`torch.func` (`clreg.importance.fallback`)."""
from clreg.importance.rules.base import RULES, Rule, linear_statistics, power_of, register, rule_for
from clreg.importance.rules import attention, embedding, linear, norm  # noqa: F401 (they register their rules)

__all__ = ["RULES", "Rule", "register", "rule_for", "linear_statistics", "power_of"]
