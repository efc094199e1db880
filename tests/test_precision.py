"""Small learning rates must move a model asked to train in bf16 (issue: pure bf16 weights drop the updates)."""

import torch

from engine.config import config_from_dict
from engine.models.loading import load_model
from engine.recipes.preference import train_preference_model, weights_dtype
from engine.store.runs import RunWriter


def changed_fraction(before: dict, after: dict) -> float:
    """Share of all weight entries that differ after training."""
    changed = sum(int((after[k].float() != v.float()).sum()) for k, v in before.items())
    return changed / sum(v.numel() for v in before.values())


def test_bf16_full_finetuning_at_lr_1e6_changes_the_weights(tiny_world, data_root):
    cfg = config_from_dict({"method": "dpo", "model": {"path": str(tiny_world.sft), "dtype": "bfloat16"},
                            "data": {"train": str(tiny_world.prefs_train), "eval": None, "limit": 16,
                                     "max_length": 64},
                            "training": {"learning_rate": 1e-6, "batch_size": 8, "max_steps": 2,
                                         "warmup_ratio": 0.0}})
    assert weights_dtype(cfg) == "float32"
    before = load_model(tiny_world.sft, dtype="float32").state_dict()
    out = train_preference_model(cfg, RunWriter.create("bf16", method="dpo", name="bf16", config={}))
    assert changed_fraction(before, load_model(out, dtype="float32").state_dict()) > 0.5


def test_the_same_update_on_pure_bf16_weights_is_mostly_lost(tiny_world):
    """The contrast that makes the test above meaningful: AdamW at lr 1e-6 on bf16 weights moves almost nothing."""
    model = load_model(tiny_world.sft, dtype="bfloat16")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    ids = torch.arange(1, 17).unsqueeze(0)
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert changed_fraction(before, model.state_dict()) < 0.05
