"""De Lange et al.'s VGG networks: parameter counts from the layer lists, shapes, initialisation, and a short
end-to-end run on generated Tiny ImageNet files."""
import numpy as np
import pytest
import torch

from clreg.train.config import RunConfig
from clreg.models.build import MultiHead, build_model
from clreg.train.loop import Trainer, load_benchmark
from clreg.models.vgg import CONFIGS, POOL

# their definitions (Mattdl/CLsurvey, src/models/VGGSlim.py) on 64×64×3 with a 10-way head
EXPECTED = {"vgg-small": 614_090, "vgg-base": 3_510_858, "vgg-wide": 8_963_466, "vgg-deep": 6_646_154}


def count_by_hand(layers, dense, classes=10, side=64):
    """Parameters of 3×3 convolutions (weights + bias), then flatten → dense[0] → dense[1] → classes."""
    total, channels = 0, 3
    for item in layers:
        if item == POOL:
            side //= 2
        else:
            total += 9 * channels * item + item
            channels = item
    widths = [channels * side * side, *dense, classes]
    return total + sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_counts_and_shapes(name):
    layers, dense = CONFIGS[name]
    assert count_by_hand(layers, dense) == EXPECTED[name]
    model = build_model(name, (3, 64, 64), list(dense), 10, torch.Generator().manual_seed(0))
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name]
    assert model(torch.rand(5, 3, 64, 64)).shape == (5, 10)
    heads = build_model(name, (3, 64, 64), list(dense), [10, 10, 10], torch.Generator().manual_seed(0))
    assert isinstance(heads, MultiHead) and heads(torch.rand(2, 3, 64, 64), 2).shape == (2, 10)
    assert sum(p.numel() for p in heads.body.parameters()) == EXPECTED[name] - (dense[1] * 10 + 10)


@torch.no_grad()
def test_initialisation_is_theirs():
    model = build_model("vgg-wide", (3, 64, 64), [512, 512], 10, torch.Generator().manual_seed(0))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for conv in convs[-2:]:  # the large ones: the sample std is close to the target
        target = (2 / (conv.out_channels * 9)) ** 0.5  # Kaiming normal, fan-out, ReLU
        assert float(conv.weight.std()) == pytest.approx(target, rel=0.02) and float(conv.bias.abs().max()) == 0
    assert float(linears[0].weight.std()) == pytest.approx(0.01, rel=0.02)
    same = build_model("vgg-wide", (3, 64, 64), [512, 512], 10, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))  # seeded
    with pytest.raises(ValueError, match="vgg-small needs image inputs .* at least 16x16"):
        build_model("vgg-small", (3, 8, 8), [128, 128], 10)
    with pytest.raises(ValueError, match="the vgg-base network takes 2 widths"):
        RunConfig(network="vgg-base", hidden=[1, 2, 3])


def test_short_run_on_generated_tiny_imagenet(tmp_path):
    pytest.importorskip("PIL")
    from test_datasets import write_tiny_imagenet

    write_tiny_imagenet(tmp_path, classes=20, per_class=6, val_per_class=2)
    config = RunConfig(benchmark="split-tiny-imagenet", network="vgg-small", method="si", c=1.0, tasks=2, epochs=1,
                       batch_size=4, data_dir=str(tmp_path), device="cpu")
    trainer = Trainer(config, load_benchmark(config), progress=False)
    accuracy = trainer.run()
    assert accuracy.shape == (2, 2) and np.all((accuracy >= 0) & (accuracy <= 1))
    assert isinstance(trainer.model, MultiHead) and len(trainer.model.heads) == 2
    assert all(torch.isfinite(o).all() and float(o.sum()) > 0 for o in trainer.reg.omega.values())


def test_tiny_imagenet_tasks_of_twenty_classes_as_in_their_code(tmp_path):
    pytest.importorskip("PIL")
    from test_datasets import write_tiny_imagenet

    from clreg.benchmarks import build_benchmark

    write_tiny_imagenet(tmp_path, classes=40, per_class=5, val_per_class=1)
    bench = build_benchmark("split-tiny-imagenet", 2, 0, "test", tmp_path, split_classes=20)
    assert bench.classes == [20, 20] and bench.num_tasks == 2
    assert sorted(set(bench.tasks[1].evaluation.y.tolist())) == list(range(20))
    with pytest.raises(ValueError, match="--split-classes must divide its 200 classes, got 30"):
        build_benchmark("split-tiny-imagenet", 2, 0, "test", tmp_path, split_classes=30)
    with pytest.raises(ValueError, match="split-tiny-imagenet has 10 tasks; --tasks must be 1..10, got 11"):
        build_benchmark("split-tiny-imagenet", 11, 0, "test", tmp_path, split_classes=20)


def test_their_whole_protocol_on_generated_tiny_imagenet(tmp_path):
    """SGD with momentum, the plateau schedule and the per-task search together, end to end."""
    pytest.importorskip("PIL")
    from test_datasets import write_tiny_imagenet

    from clreg.train.loop import run

    write_tiny_imagenet(tmp_path, classes=20, per_class=5, val_per_class=1)
    config = RunConfig(benchmark="split-tiny-imagenet", network="vgg-small", method="mas", c=1.0, tasks=2, epochs=2,
                       batch_size=8, optimizer="sgd", momentum=0.9, lr_schedule="plateau", lr_patience=1,
                       stop_patience=1, lr_search=[0.01, 0.001], lr_search_first=[0.05, 0.01], data_dir=str(tmp_path),
                       device="cpu")
    result = run(config, progress=False)
    assert [r["task"] for r in result["search"]] == [0, 1]
    assert [len(r["plain"]) for r in result["search"]] == [2, 2]
    assert all(r["lr"] in (0.05, 0.01, 0.001) and r["attempts"] for r in result["search"])
    # every attempt ran the plateau schedule: its best validation accuracy is the attempt's score
    attempts = [a for r in result["search"] for a in r["plain"] + r["attempts"]]
    assert [h["best_validation_accuracy"] for h in result["plateau"]] == [a["validation_accuracy"] for a in attempts]
