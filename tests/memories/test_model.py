"""Mixed-task batches, padding, frozen backbone and routing on real (tiny, random) encoders."""

from __future__ import annotations

import pytest
import torch

from memories.backbone import Backbone, pool
from memories.config import SpartanConfig
from memories.model import PackedMemory, TaskMemory, in_own_mapping, run_batch
from tests.conftest import TINY_BACKBONES

TEXTS = [
    "a short one",
    "this row is quite a bit longer than the first one, with commas",
    "mid length text here",
    "x",
    "another fairly long sentence that needs padding elsewhere",
]


def _tasks(backbone: Backbone) -> list[PackedMemory]:
    """Three tasks: two with the default shape, one with other hyper-parameters and 3 labels."""
    torch.manual_seed(1)
    configs = [SpartanConfig(), SpartanConfig(), SpartanConfig(num_parents=5, num_children=2, top_k=2)]
    tasks = []
    for config, outputs in zip(configs, [2, 2, 3], strict=True):
        task = TaskMemory(backbone.hidden_size, backbone.num_layers, outputs, config)
        for layer in task.layers:  # trained-looking values, so a wrong row would show
            torch.nn.init.normal_(layer.child_values, std=0.5)  # type: ignore[arg-type]
        tasks.append(task.pack(backbone.pooling))
    return tasks


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_mixed_batch_equals_each_row_alone(tiny_backbones: dict[str, Backbone], name: str) -> None:
    backbone = tiny_backbones[name]
    tasks = _tasks(backbone)
    row_tasks = [tasks[0], tasks[1], tasks[2], tasks[1], tasks[0]]
    mixed = run_batch(backbone, backbone.tokenize(TEXTS), row_tasks)
    for text, task, logits in zip(TEXTS, row_tasks, mixed.logits, strict=True):
        alone = run_batch(backbone, backbone.tokenize([text]), [task]).logits[0]
        assert logits.shape == (task.num_outputs,)
        torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)
    other = run_batch(backbone, backbone.tokenize(TEXTS[:1]), [tasks[1]]).logits[0]
    assert not torch.allclose(mixed.logits[0], other, atol=1e-3), (
        "tasks must differ, or the test proves nothing"
    )


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_padding_never_changes_other_rows(tiny_backbones: dict[str, Backbone], name: str) -> None:
    backbone = tiny_backbones[name]
    task = _tasks(backbone)[0]
    short = backbone.tokenize(TEXTS[:1] + TEXTS[3:4])
    padded = backbone.tokenize(TEXTS[:1] + TEXTS[3:4] + [TEXTS[1] * 3])
    assert padded.input_ids.shape[1] > short.input_ids.shape[1]
    a = run_batch(backbone, short, [task] * 2).logits
    b = run_batch(backbone, padded, [task] * 3).logits
    for row in range(2):
        torch.testing.assert_close(a[row], b[row], atol=1e-5, rtol=1e-5)


def test_mean_pooling_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_training_step_changes_memory_and_head_but_not_backbone(
    tiny_backbones: dict[str, Backbone], name: str
) -> None:
    backbone = tiny_backbones[name]
    before_backbone = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    torch.manual_seed(0)
    task = TaskMemory(backbone.hidden_size, backbone.num_layers, 2, SpartanConfig())
    before_task = {k: v.clone() for k, v in task.state_dict().items()}
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)
    batch = backbone.tokenize(TEXTS)
    loss = torch.nn.functional.cross_entropy(
        task(backbone, batch, backbone.pooling), torch.tensor([0, 1, 0, 1, 0])
    )
    loss.backward()
    optimizer.step()
    after_backbone = backbone.model.state_dict()
    assert before_backbone.keys() == after_backbone.keys()
    for key, value in before_backbone.items():
        assert torch.equal(value, after_backbone[key]), f"backbone tensor {key} changed"
    assert all(p.grad is None for p in backbone.model.parameters())
    for key, value in task.state_dict().items():
        assert not torch.equal(value, before_task[key]), f"trainable tensor {key} did not change"


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_untrained_memory_changes_backbone_output_slightly(
    tiny_backbones: dict[str, Backbone], name: str
) -> None:
    backbone = tiny_backbones[name]
    torch.manual_seed(0)
    task = TaskMemory(backbone.hidden_size, backbone.num_layers, 2, SpartanConfig())
    batch = backbone.tokenize(TEXTS)
    with torch.no_grad():
        bare = backbone.forward(batch)
        hidden = backbone.forward(batch, lambda i, h: task.layers[i](h))
    change = (hidden - bare).norm() / bare.norm()
    assert 0 < change < 0.1


def test_routing_is_recorded_per_row_and_layer(roberta_tiny: Backbone) -> None:
    tasks = _tasks(roberta_tiny)
    batch = roberta_tiny.tokenize(TEXTS[:3])
    out = run_batch(roberta_tiny, batch, tasks, record_routing=True)
    assert out.routing is not None
    seq = batch.input_ids.shape[1]
    for task, gates in zip(tasks, out.routing, strict=True):
        assert gates.shape == (roberta_tiny.num_layers, seq, task.config.num_parents)
        assert ((gates > 0).sum(-1) == task.config.top_k).all()


def test_packed_memory_counts_its_bytes(roberta_tiny: Backbone) -> None:
    task = TaskMemory(roberta_tiny.hidden_size, roberta_tiny.num_layers, 2, SpartanConfig())
    packed = task.pack("cls")
    assert packed.nbytes() == 4 * sum(t.numel() for t in task.state_dict().values())


def test_fp16_resident_memory_halves_its_bytes_and_predicts_like_fp32(roberta_tiny: Backbone) -> None:
    torch.manual_seed(2)
    task = TaskMemory(roberta_tiny.hidden_size, roberta_tiny.num_layers, 2, SpartanConfig())
    for layer in task.layers:
        torch.nn.init.normal_(layer.child_values, std=0.5)  # type: ignore[arg-type]
    full, half = task.pack("cls"), task.pack("cls", torch.float16)
    assert half.dtype == torch.float16
    assert full.dtype == torch.float32
    assert 2 * half.nbytes() == full.nbytes()
    batch = roberta_tiny.tokenize(TEXTS)
    a = run_batch(roberta_tiny, batch, [full] * len(TEXTS)).logits
    b = run_batch(roberta_tiny, batch, [half] * len(TEXTS)).logits
    for x, y in zip(a, b, strict=True):
        assert y.dtype == torch.float32
        torch.testing.assert_close(x, y, atol=5e-3, rtol=5e-3)


def test_mixed_batch_of_fp16_and_fp32_memories_equals_each_row_alone(roberta_tiny: Backbone) -> None:
    fp32 = _tasks(roberta_tiny)[0]
    torch.manual_seed(3)
    half = TaskMemory(roberta_tiny.hidden_size, roberta_tiny.num_layers, 2, SpartanConfig()).pack(
        "cls", torch.float16
    )
    rows = [fp32, half, half, fp32, half]
    mixed = run_batch(roberta_tiny, roberta_tiny.tokenize(TEXTS), rows)
    for text, memory, logits in zip(TEXTS, rows, mixed.logits, strict=True):
        alone = run_batch(roberta_tiny, roberta_tiny.tokenize([text]), [memory]).logits[0]
        torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)


def test_declared_shapes_are_the_modules_own() -> None:
    config = SpartanConfig(num_parents=5, num_children=2, top_k=3)
    task = TaskMemory(12, 3, 4, config)
    assert TaskMemory.shapes(12, 3, 4, config) == {n: tuple(t.shape) for n, t in task.state_dict().items()}


def test_a_packed_memory_lives_in_one_mapping_of_its_own() -> None:
    task = TaskMemory(16, 2, 3, SpartanConfig(num_parents=4, num_children=2, top_k=2)).requires_grad_(False)
    packed = task.pack("cls", torch.bfloat16, torch.float32)
    tensors = [t for pair in packed.layers for t in pair] + list(packed.head)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1, "one mapping, freed whole"
    assert all(t.is_contiguous() for t in tensors)
    again = task.pack("cls", torch.bfloat16, torch.float32)
    for a, b in zip(tensors, [t for pair in again.layers for t in pair] + list(again.head), strict=True):
        assert torch.equal(a, b)
    copies = in_own_mapping([torch.arange(5), torch.ones(3, dtype=torch.float16)])
    assert [c.tolist() for c in copies] == [[0, 1, 2, 3, 4], [1.0, 1.0, 1.0]]
