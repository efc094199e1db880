"""The DPO-family trainers on a tiny world: precomputed reference values, equality with stock TRL, learning, CLI."""

import dataclasses
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from trl import DPOTrainer

from engine.config import config_from_dict
from engine.data.loaders import load_preferences
from engine.data.validation import truncate_pairs
from engine.losses import mean_normalized_entropy
from engine.methods import get_method
from engine.models.loading import load_model, load_tokenizer
from engine.models.logprobs import tokenize_pairs
from engine.paths import REPO_ROOT
from engine.recipes.preference import train_preference_model, training_arguments
from engine.store.runs import RunWriter, StoreReader, read_run


def run_config(world, method, **extra):
    raw = {"method": method, "model": {"path": str(world.sft)},
           "data": {"train": str(world.prefs_train), "eval": str(world.prefs_test), "max_length": 96},
           "training": {"learning_rate": 5e-3, "batch_size": 16, "max_steps": 24, "eval_every": 12,
                        "warmup_ratio": 0.0, "seed": 0}}
    raw.update(extra)
    return config_from_dict(raw)


def direct_logps(model_path, tokenizer_path, prompts, responses):
    """Summed response log-probs and mean normalized entropies from full logits: the independent truth."""
    tok, model = load_tokenizer(tokenizer_path), load_model(model_path)
    prompt_ids, response_ids = tokenize_pairs(tok, prompts, responses)
    logps, entropies = [], []
    for p, r in zip(prompt_ids, response_ids):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()[:, :-1]
        targets = ids[:, 1:]
        mask = torch.zeros_like(targets, dtype=torch.float)
        mask[:, len(p) - 1:] = 1
        token_logps = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        logps.append((token_logps * mask).sum().item())
        entropies.append(mean_normalized_entropy(logits, mask).item())
    return logps, entropies


def build_trainer(world, method, data_root, steps=3, **sections):
    cfg = run_config(world, method, training={"learning_rate": 1e-3, "batch_size": 8, "max_steps": steps,
                                              "warmup_ratio": 0.0, "seed": 0}, **sections)
    tok = load_tokenizer(world.sft)
    train, _ = truncate_pairs(load_preferences(str(world.prefs_train), limit=16), tok, cfg.data.max_length)
    args = training_arguments(cfg, data_root / "out", has_eval=False)
    trainer = get_method(method).load_trainer()(model=load_model(world.sft), args=args, train_dataset=train,
                               processing_class=tok,
                               method_params=cfg.params)
    return trainer, cfg


def test_precomputed_reference_values_equal_a_direct_computation(tiny_world, data_root):
    trainer, _ = build_trainer(tiny_world, "mallows_po", data_root)
    data = trainer.train_dataset
    eos = trainer.processing_class.eos_token
    chosen = [c.removesuffix(eos) for c in data["chosen"]]
    logps, entropies = direct_logps(tiny_world.sft, tiny_world.sft, data["prompt"], chosen)
    assert data["ref_chosen_logps"] == pytest.approx(logps, abs=1e-3)
    assert data["ref_chosen_entropy"] == pytest.approx(entropies, abs=1e-4)
    assert all(0 < e < 1 for e in entropies)


def test_mrpo_secondary_with_another_tokenizer_scores_the_same_text(tiny_world, data_root):
    references = [str(tiny_world.sft), str(tiny_world.other_tokenizer_ref)]
    trainer, _ = build_trainer(tiny_world, "mrpo", data_root, mrpo={"references": references})
    data = trainer.train_dataset
    eos = trainer.processing_class.eos_token
    rejected = [r.removesuffix(eos) for r in data["rejected"]]
    logps, _ = direct_logps(tiny_world.other_tokenizer_ref, tiny_world.other_tokenizer_ref, data["prompt"], rejected)
    refs = torch.tensor(data["refs_rejected_logps"])
    assert refs[:, 1].tolist() == pytest.approx(logps, abs=1e-3)
    assert refs[:, 0].tolist() == pytest.approx(data["ref_rejected_logps"], abs=1e-6)


def test_dpo_trainer_equals_stock_trl_step_for_step(tiny_world, data_root):
    ours, cfg = build_trainer(tiny_world, "dpo", data_root, steps=4)
    ours.train()
    stock = DPOTrainer(model=load_model(tiny_world.sft), args=training_arguments(cfg, data_root / "stock", False),
                       train_dataset=ours.train_dataset.select_columns(["prompt", "chosen", "rejected"]),
                       processing_class=load_tokenizer(tiny_world.sft))
    stock.train()
    mine = [h for h in ours.state.log_history if "loss" in h]
    theirs = [h for h in stock.state.log_history if "loss" in h]
    assert len(mine) == len(theirs) == 4
    for a, b in zip(mine, theirs):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("method", ["dpo", "mallows_po", "mrpo"])
def test_each_method_learns_the_preferences_and_logs_its_metrics(tiny_world, data_root, method):
    extra = {"dpo": {}, "mallows_po": {"mallows_po": {"phi_star": "auto"}},
             "mrpo": {"mrpo": {"references": [str(tiny_world.sft), str(tiny_world.ref2)]}}}[method]
    cfg = run_config(tiny_world, method, **extra)
    writer = RunWriter.create(f"t-{method}", method=method, name=method, config={})
    out = train_preference_model(cfg, writer)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    last = StoreReader().last_values([writer.run_id]).set_index("name")["value"]
    expected = {"loss", "rewards/margins", "rewards/accuracies", "grad_norm", "learning_rate", "tokens_per_s",
                "eval_rewards/accuracies", "eval_rewards/margins", "data/train_pairs"}
    expected |= {"dpo": set(), "mallows_po": {"mallows/c_mean", "mallows/c_std", "rewards_scaled/margins"},
                 "mrpo": {"mrpo/alpha_0", "mrpo/alpha_1", "mrpo/clip_frac_w", "mrpo/eps_w"}}[method]
    assert expected <= set(last.index), expected - set(last.index)
    assert last["eval_rewards/accuracies"] >= 0.7
    if method == "mallows_po":  # phi_star "auto" makes the mean dispersion about 1 on the training set
        curve = StoreReader().curve("mallows/c_mean", [writer.run_id])
        assert curve["value"].mean() == pytest.approx(1.0, abs=0.25)


def test_train_command_runs_a_config_file_end_to_end(tiny_world, data_root, tmp_path):
    cfg = {"method": "dpo", "model": {"path": str(tiny_world.sft)},
           "data": {"train": str(tiny_world.prefs_train), "eval": None, "limit": 16, "max_length": 64},
           "training": {"learning_rate": 1e-3, "batch_size": 8, "max_steps": 2}, "logging": {"run_name": "cli"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "engine", "train", "--config", str(path)], cwd=REPO_ROOT,
                            env=os.environ, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_id,) = [p.name for p in (data_root / "runs").iterdir()]
    run = read_run(run_id)
    assert run["status"] == "finished" and run["name"] == "cli"
    steps = StoreReader().query("SELECT DISTINCT step FROM metrics WHERE name = 'loss' ORDER BY step")
    assert steps["step"].tolist() == [1, 2]
    assert isinstance(pd.read_json(data_root / "runs" / run_id / "run.json", typ="series")["config"], dict)


@pytest.mark.parametrize(("dtype", "bf16", "fp16"), [("float32", False, False), ("bfloat16", True, False),
                                                    ("float16", False, True), ("auto", False, False)])
def test_every_model_dtype_maps_to_its_precision_on_cpu(tiny_world, data_root, dtype, bf16, fp16):
    """Each dtype the config schema allows gives the trainer its mixed-precision flags (auto on CPU: float32)."""
    cfg = run_config(tiny_world, "dpo", model={"path": str(tiny_world.sft), "dtype": dtype})
    args = training_arguments(cfg, data_root / "out", has_eval=False)
    assert (args.bf16, args.fp16) == (bf16, fp16)
    assert not args.torch_compile


def test_compiled_training_takes_the_same_steps_as_eager(tiny_world, data_root):
    """training.compile runs the policy through torch.compile; two steps give the eager run's losses."""
    losses = {}
    for compiled in (False, True):
        cfg = run_config(tiny_world, "dpo", training={"learning_rate": 1e-3, "batch_size": 8, "max_steps": 2,
                                                     "warmup_ratio": 0.0, "seed": 0, "compile": compiled})
        tok = load_tokenizer(tiny_world.sft)
        train, _ = truncate_pairs(load_preferences(str(tiny_world.prefs_train), limit=16), tok, cfg.data.max_length)
        args = training_arguments(cfg, data_root / f"compiled_{compiled}", has_eval=False)
        args.logging_steps = 1
        assert args.torch_compile is compiled
        if compiled:  # graph capture through the trainer, without needing a C compiler for inductor on CI
            args = dataclasses.replace(args, torch_compile_backend="aot_eager")
        trainer = get_method("dpo").load_trainer()(model=load_model(tiny_world.sft), args=args, train_dataset=train,
                                  processing_class=tok, method_params=cfg.params)
        trainer.train()
        losses[compiled] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_mallows_phi_from_the_reference_moves_and_logs_only_what_its_loss_uses(tiny_world, data_root):
    """At policy == reference every margin is 0, where the phi loss has zero gradient: without the DPO warm start
    (the bandit lab's remedy) the run would never move. Its logs hold no theta quantity (c, beta * c * Delta)."""
    trainer, _ = build_trainer(tiny_world, "mallows_po", data_root, steps=4, mallows_po={"variant": "phi"})
    trainer.args.logging_steps = 1
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 4
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # -log sigmoid(0): DPO at the reference
    assert all(h["grad_norm"] > 0 for h in steps)  # the phi steps move too, from the warm start's margins
    assert all(h["rewards/margins"] != 0 for h in steps[1:]) and steps[-1]["loss"] != steps[0]["loss"]
    assert [h["mallows/dpo_warmup"] for h in steps] == [1.0, 0.0, 0.0, 0.0]  # ceil(0.1 * 4) = 1 DPO step
    keys = set().union(*steps)
    assert not [k for k in keys if k.startswith(("mallows/c_", "rewards_scaled/", "mallows/ref_entropy"))], keys


def _g_phi(d: float, phi: float) -> float:
    """The Kendall-tau Mallows pairwise law g_phi(d), d != 0, from its formula (docs/methods/mallows_po.md)."""
    if d < 0:
        return 1 - _g_phi(-d, phi)
    return (d + 1) / (1 - phi ** (d + 1)) - d / (1 - phi**d)


def test_mallows_phi_trains_with_dpo_for_the_warmup_steps_then_with_the_kendall_link(tiny_world, data_root):
    trainer, _ = build_trainer(tiny_world, "mallows_po", data_root, mallows_po={
        "variant": "phi", "phi": 0.3, "beta": 0.5, "dpo_warmup_ratio": 0.25})
    trainer.state.max_steps = 10  # ceil(0.25 * 10) = 3 warm-up steps: global steps 0, 1 and 2
    ref_w, ref_l = torch.tensor([-20.0, -31.0, -12.0]), torch.tensor([-25.0, -30.0, -12.5])
    offset_w, offset_l = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-1.0, 1.0, 3.0])
    batch = {"ref_chosen_logps": ref_w, "ref_rejected_logps": ref_l,
             "ref_chosen_entropy": torch.full((3,), 0.5), "ref_rejected_entropy": torch.full((3,), 0.5)}
    margins = [0.5 * (w - l) for w, l in zip(offset_w.tolist(), offset_l.tolist())]  # beta * Delta: 1, -1.5, -1.25
    dpo = [math.log1p(math.exp(-m)) for m in margins]
    phi = [-math.log(_g_phi(m, 0.3)) for m in margins]
    for step, training, expected in ((0, True, dpo), (2, True, dpo), (3, True, phi), (0, False, phi)):
        trainer.state.global_step = step
        trainer.model.train(training)  # evaluation always reports the phi loss, the method's objective
        losses, logs = trainer.preference_loss(ref_w + offset_w, ref_l + offset_l, batch)
        assert losses.tolist() == pytest.approx(expected, rel=1e-6), (step, training)
        assert logs["mallows/dpo_warmup"] == float(expected is dpo)
    theta, _ = build_trainer(tiny_world, "mallows_po", data_root)
    _, logs = theta.preference_loss(ref_w + offset_w, ref_l + offset_l, batch)
    assert {"mallows/c_mean", "rewards_scaled/margins"} <= set(logs) and "mallows/dpo_warmup" not in logs


def test_mrpo_config_chooses_the_virtual_reference_and_the_arwc_convention(tiny_world, data_root):
    """mrpo.virtual_ref and mrpo.arwc_convention from a config reach the loss: each changes it as computed by hand."""
    references = [str(tiny_world.sft), str(tiny_world.ref2)]
    trainer, _ = build_trainer(tiny_world, "mrpo", data_root, mrpo={"references": references})
    refs_w, refs_l = [[-2.0, -3.0], [-4.0, -1.5]], [[-2.5, -1.0], [-3.0, -3.5]]  # [B, K], primary first
    policy_w, policy_l = torch.tensor([-1.0, -3.0]), torch.tensor([-3.0, -2.0])
    batch = {"ref_chosen_logps": torch.tensor([r[0] for r in refs_w]),
             "ref_rejected_logps": torch.tensor([r[0] for r in refs_l]),
             "refs_chosen_logps": torch.tensor(refs_w), "refs_rejected_logps": torch.tensor(refs_l)}
    a = (0.7, 0.3)

    def harmonic(logps, weights):  # log of (sum_k a_k / pi_k)^-1, from probabilities
        return -math.log(sum(w / math.exp(lp) for w, lp in zip(weights, logps)))

    def geometric(logps, weights):
        return sum(w * lp for w, lp in zip(weights, logps))

    def dpo(tilde):  # -log sigmoid(beta * Delta) against the virtual reference, beta 0.1
        out = []
        for pw, pl, rw, rl in zip(policy_w.tolist(), policy_l.tolist(), refs_w, refs_l):
            out.append(math.log1p(math.exp(-0.1 * ((pw - tilde(rw)) - (pl - tilde(rl))))))
        return out

    cases = {("harmonic", "paper"): dpo(lambda r: harmonic(r, a)),
             ("geometric", "paper"): dpo(lambda r: geometric(r, a)),
             ("harmonic", "official_k2"): dpo(lambda r: harmonic(r, a[::-1]))}  # its weights sit on the other 1/pi
    assert len({tuple(round(v, 9) for v in losses) for losses in cases.values()}) == 3  # each option matters here
    for (virtual_ref, convention), expected in cases.items():
        trainer.method_params = run_config(tiny_world, "mrpo", mrpo={
            "references": references, "alpha": list(a), "clip": False, "virtual_ref": virtual_ref,
            "arwc_convention": convention}).params
        losses, logs = trainer.preference_loss(policy_w, policy_l, batch)
        assert losses.tolist() == pytest.approx(expected, rel=1e-6), (virtual_ref, convention)
        assert logs["mrpo/alpha_0"] == pytest.approx(a[1] if convention == "official_k2" else a[0])
