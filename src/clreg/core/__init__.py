"""The lowest layer: what every other layer builds on and that knows no model, data set or run.

- `formulas`: each step formula written once (optimiser updates, the penalty gradient, the trajectory
  statistics), elementwise over tensors whose scalars broadcast;
- `optimizers`, `statistic`: the registries that declare which optimisers and statistic kinds the formulas cover;
- `step`: one regularised training step over a list of tensors, per tensor or stacked, eager, compiled or native;
- `native`, `fused`: the C kernel, a registered fast path checked against the formulas;
- `penalty`: the quadratic penalty over tasks;
- `options`, `device`, `records`: declared settings, devices and precision, run records and safe file writes.
"""
