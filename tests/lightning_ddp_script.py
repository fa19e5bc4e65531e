"""Lightning's DDP strategy with clreg's callback, 2 CPU processes (Lightning relaunches this script for the
second): 2 tasks of 96 examples, each process taking its 48 as one batch (so the global batch is the whole
task, whatever order Lightning's distributed sampler gives); process 0 saves the parameters and Ω.
Run by tests/test_lightning.py:

    python tests/lightning_ddp_script.py METHOD C OUT.pt
"""
import sys
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader

from clreg.integrations.lightning import ContinualRegularizer
from ddp_exit import leave
from test_lightning import Classifier, tasks

method, c, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
module = Classifier()
callback = ContinualRegularizer(method, c, samples=64)  # each process measures on its 48 of a task's 96
for task in tasks():
    trainer = L.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=2,
                        strategy="ddp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(task.dataset, batch_size=48, shuffle=False))
if trainer.global_rank == 0:
    torch.save({"params": [p.detach() for p in module.parameters()], "omega": callback.reg.omega}, out)
leave()  # (tests/ddp_exit.py: why not a plain exit)
