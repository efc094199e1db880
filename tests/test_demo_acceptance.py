"""The DPO-family methods on the full-scale demo world, with the configs a researcher runs
(configs/{dpo,mallows,mrpo}_demo.yaml): after training on the sentiment pairs, held-out reward accuracy is at least
0.7 and the sentiment judge, which never saw training, prefers the trained policy's continuations to SFT's on more
than half of the held-out prompts. The slowest module of the suite (~6 min on 2 cores: the world, three trainings
of ~75 s).
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

from engine.config import load_config
from engine.decoding.generation import SamplingParams, generate
from engine.evaluation import outcomes_from_probabilities
from engine.judges import get_judge
from engine.paths import REPO_ROOT
from engine.recipes.preference import train_preference_model
from engine.store.runs import RunWriter, StoreReader

# The demo evaluation's sampling (configs/demo.yaml: eval), so the numbers compare with the README's.
SAMPLING = SamplingParams(max_new_tokens=48, temperature=0.5, seed=0)


@pytest.fixture(scope="module")
def full_world(tmp_path_factory):
    from engine.data.demo.prepare import prepare_demo

    root = tmp_path_factory.mktemp("full_demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFLAB_DATA", str(root))
        world = prepare_demo(scale="full", progress=False)
        prompts = pd.read_parquet(world["prompts_heldout"])["prompt"].tolist()
        yield {"prompts": prompts, "sft": generate(str(world["sft"]), prompts, SAMPLING).texts}


@pytest.mark.parametrize("method, config", [("dpo", "dpo_demo.yaml"), ("mallows_po", "mallows_demo.yaml"),
                                            ("mrpo", "mrpo_demo.yaml")])
def test_trained_policy_beats_sft_on_held_out_sentiment(full_world, method, config):
    cfg = load_config(REPO_ROOT / "configs" / config)
    assert cfg.method == method and cfg.data.train.endswith("prefs_sentiment_train.parquet")
    writer = RunWriter.create(f"accept-{method}", method=method, name=method, config={})
    start = time.perf_counter()
    policy = train_preference_model(cfg, writer)
    print(f"{method}: trained in {time.perf_counter() - start:.0f} s")
    accuracy = StoreReader().last_values([writer.run_id]).set_index("name")["value"]["eval_rewards/accuracies"]
    assert accuracy >= 0.7

    prompts = full_world["prompts"]
    trained = generate(str(policy), prompts, SAMPLING).texts
    prob = get_judge("bt:sentiment").prob_a_beats_b(prompts, trained, full_world["sft"])
    outcomes = outcomes_from_probabilities(prob)  # a win 1, a tie 0.5, as every evaluation counts them
    print(f"{method}: held-out reward accuracy {accuracy:.3f}, sentiment judge prefers it on {outcomes.mean():.3f} "
          f"of {len(prompts)} prompts")
    assert outcomes.mean() > 0.5
