"""Cached build steps of a world: a step's outputs are kept while the manifest records the same key for it.

A key hashes the world's format version, the seed, the step's name and sizes, and the keys of the steps it depends
on: changing a size rebuilds that step and everything downstream; `force` rebuilds all. The manifest
(<world folder>/manifest.json) is rewritten after every step, so an interrupted build keeps the steps it finished.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Step:
    depends: list[str]
    config: object  # what the step's output depends on besides its dependencies (sizes, file identity)
    outputs: list[Path]  # all must exist for a cached step to count as built
    build: Callable[[], dict]  # builds the outputs, returns metrics for the manifest


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_steps(world: str, steps: dict[str, Step], manifest_path: Path, version: int, seed: int, scale: str,
              force: bool = False, progress: bool = True, num_threads: int | None = 1) -> dict:
    """Build the steps that are not cached, in order; returns metrics per step, seconds and what was rebuilt."""
    from engine.models.loading import torch_threads

    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    records, keys, built, seconds = manifest.get("steps", {}), {}, [], {}
    for name, step in steps.items():
        keys[name] = _key(version, seed, name, step.config, [keys[d] for d in step.depends])
        fresh = (records.get(name, {}).get("key") == keys[name] and all(p.exists() for p in step.outputs)
                 and not any(d in built for d in step.depends))
        if fresh and not force:
            seconds[name] = 0.0
            if progress:
                print(f"{world} prepare: {name:<12} cached", flush=True)
            continue
        start = time.perf_counter()
        with torch_threads(num_threads):
            metrics = step.build()
        seconds[name] = time.perf_counter() - start
        built.append(name)
        records[name] = {"key": keys[name], "seconds": round(seconds[name], 2), "metrics": metrics}
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps({"version": version, "seed": seed, "scale": scale, "steps": records},
                                            indent=2))
        if progress:
            print(f"{world} prepare: {name:<12} built in {seconds[name]:.1f} s  {metrics}", flush=True)
    return {"manifest": str(manifest_path), "metrics": {name: records[name]["metrics"] for name in steps},
            "seconds": seconds, "built": built}
