"""Where PrefLab keeps its files. One place for every path; override the root with PREFLAB_DATA."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root of generated files: demo corpus, models, run folders. Read at call time so tests can redirect it."""
    return Path(os.environ.get("PREFLAB_DATA", REPO_ROOT / "data")).resolve()


def runs_dir() -> Path:
    """One folder per run: data/runs/<run_id>/ holds its append-only metric files, log and checkpoints."""
    return data_dir() / "runs"


def demo_dir() -> Path:
    """The offline demo world: corpus, preference sets, prompt sets."""
    return data_dir() / "demo"


def smollm2_dir() -> Path:
    """The SmolLM2 world: chat prompts and preference sets (its converted model is under models_dir())."""
    return data_dir() / "smollm2"


def models_dir() -> Path:
    """Tiny models built offline (tokenizer, SFT model, second reference) and trained policies."""
    return data_dir() / "models"


@dataclass(frozen=True)
class RunLayout:
    """Every file and folder a run folder may hold, defined once for the code that writes it and the code that reads
    it. A mixing run's experts and baselines are run folders of their own inside it (model/, checkpoints/).

        run.json, status.jsonl, log.txt      the run's metadata, status events and job log (engine/store/)
        <table>.jsonl, <table>.parquet       append-only table rows, compacted to Parquet at the end
        model/, checkpoints/checkpoint-N/    what training leaves (TRL's checkpoints, for --resume)
        checkpoints/last/state.pt, progress.json   magnetic_po's self-play state after its last round
        experts/<objective>/, baselines/<name>/, baselines/union_<split>.parquet   a mixing run's policies
        mixing/samples.npz, samples.parquet, lambda.json, estimate_check.parquet  a mixing run's weight search
        merged/<model>/                      LoRA policies merged into their base for vLLM (the demo's evaluation)
    """

    root: Path

    @classmethod
    def of(cls, run_id: str) -> RunLayout:
        return cls(runs_dir() / run_id)

    # the store's own files
    @property
    def metadata(self) -> Path:
        return self.root / "run.json"

    @property
    def status_log(self) -> Path:
        return self.root / "status.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    def table_rows(self, table: str) -> Path:
        return self.root / f"{table}.jsonl"

    def table_compacted(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    # what training leaves
    @property
    def model(self) -> Path:
        return self.root / "model"

    def has_model(self) -> bool:
        """A saved model: full weights (config.json) or LoRA adapters (adapter_config.json)."""
        return (self.model / "config.json").exists() or (self.model / "adapter_config.json").exists()

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, folder) of every complete `checkpoint-N`, in step order. The trainer writes trainer_state.json
        last, so a folder without it was cut short (killed, or the disk filled up while saving) and is passed over."""
        found = [(int(p.name.removeprefix("checkpoint-")), p) for p in self.checkpoints.glob("checkpoint-*")
                 if p.name.removeprefix("checkpoint-").isdigit() and (p / "trainer_state.json").is_file()]
        return sorted(found)

    def last_checkpoint(self) -> Path:
        """The newest complete checkpoint (a ValueError naming the fix when there is none)."""
        complete = self.complete_checkpoints()
        if not complete:
            raise InputError(f"resume: no complete checkpoint under {self.checkpoints}; set training.save_every > 0 "
                             "in a new run (checkpoints are written every save_every steps), or start it again "
                             "without --resume")
        return complete[-1][1]

    @property
    def selfplay_state(self) -> Path:
        """Tensors (policy, optimizer, schedule) of magnetic_po's last round; written first, then the progress."""
        return self.checkpoints / "last" / "state.pt"

    @property
    def selfplay_progress(self) -> Path:
        """Round, step and the texts the next round compares with: its presence marks a complete checkpoint."""
        return self.checkpoints / "last" / "progress.json"

    # a mixing run
    def expert(self, objective: str) -> RunLayout:
        return RunLayout(self.root / "experts" / objective)

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"

    def baseline(self, name: str) -> RunLayout:
        return RunLayout(self.baselines / name)

    def union_pairs(self, split: str) -> Path:
        return self.baselines / f"union_{split}.parquet"

    @property
    def mixing(self) -> Path:
        return self.root / "mixing"

    @property
    def samples(self) -> Path:
        return self.mixing / "samples.npz"

    @property
    def sample_texts(self) -> Path:
        return self.mixing / "samples.parquet"

    @property
    def lambda_star(self) -> Path:
        return self.mixing / "lambda.json"

    @property
    def estimate_check(self) -> Path:
        return self.mixing / "estimate_check.parquet"

    @property
    def merged(self) -> Path:
        return self.root / "merged"
