"""Checks shared by every config section: one-line errors naming the field, and where config paths point.

Relative paths are resolved against the data folder (`engine.paths.data_dir()`): `models/sft` means
`data/models/sft`. A value like `Qwen/Qwen2.5-0.5B` that is not a local path is taken as a hub name; names whose first
part is one of the data folder's own subfolders (models, demo, runs) must exist locally.

Every numeric field goes through `positive`, `nonnegative` or `in_range`, which refuse NaN and ±inf (NaN passes
no comparison in the wrong direction: `nan < 0` is False, so a bare `value < 0` check lets it through) and counts
above MAX_COUNT. Path values are shown with repr() so that a newline in one can never break the one-line message.
"""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Callable
from pathlib import Path

from engine.errors import InputError
from engine.paths import data_dir

_LOCAL_ROOTS = ("models", "demo", "runs")
# owner/name or a bare name, as the hub spells repositories. A config value counts as a hub name only in the
# owner/name form (see is_local_ref): a bare word there is far likelier a local folder with a typo.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
# The largest count (steps, batch size, tokens, samples, ranks, ...) a config may hold. Real runs stay below 10**7;
# a bigger number is a typo (an extra digit group) or an overflow, and would only fail later: an allocation of that
# many rows, or a loop that never ends. 10**9 also keeps every count exact in float64 and within int64 products.
MAX_COUNT = 10**9
# numpy's legacy seeding (transformers.set_seed) takes seeds in [0, 2**32 - 1] only.
MAX_SEED = 2**32 - 1


class ConfigError(InputError):
    """A config value is wrong; the message names the field and what to do."""


def shown(name: object) -> str:
    """A key or file name as typed when it prints on one line, else its repr(): messages stay one line."""
    return name if isinstance(name, str) and name.isprintable() and name.strip() else repr(name)


def resolve_path(value: str) -> Path:
    """Where a config path points: absolute as given, relative to the data folder otherwise."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else data_dir() / p


def resolve_source(value: str) -> str:
    """What loaders get: the resolved local path for a local reference, the hub name unchanged otherwise."""
    return str(resolve_path(value)) if is_local_ref(value) else value


def is_local_ref(value: str) -> bool:
    """True when `value` names a local file or folder rather than a hub repository."""
    first = Path(value).parts[0] if Path(value).parts else ""
    return (value.startswith(("/", "./", "../", "~")) or first in _LOCAL_ROOTS
            or resolve_path(value).exists() or "/" not in value or not HUB_ID.match(value))


def check_model_ref(where: str, value: str) -> None:
    if _local_target(where, value, Path.is_dir) is False:
        raise ConfigError(f"{where}: no model folder at {str(resolve_path(value))!r}; run `python -m engine demo "
                          "prepare` for the demo models, or give an existing path or a hub name like "
                          "Qwen/Qwen2.5-0.5B")


def check_data_ref(where: str, value: str) -> None:
    if _local_target(where, value, Path.exists) is False:
        raise ConfigError(f"{where}: no data at {str(resolve_path(value))!r}; run `python -m engine demo prepare` "
                          "for the demo data, or give an existing .parquet/.jsonl path or a hub dataset name")


def _local_target(where: str, value: str, found: Callable[[Path], bool]) -> bool | None:
    """`found(path)` for a local reference, None for a hub name. Every way the string itself can be unusable as a
    path (empty, the data folder itself, an unknown ~user, too long, a NUL byte) is a ConfigError here, before the
    file system is asked, because Path and os raise IndexError, RuntimeError, OSError or ValueError for them."""
    if not Path(value).parts:  # "", ".", "./": nothing to load, and Path("").parts[0] is an IndexError
        raise ConfigError(f"{where}: {value!r} names no file or folder (relative paths start in the data folder); "
                          "give one, e.g. models/sft or demo/prefs_sentiment_train.parquet, or a hub name")
    if "\0" in value:
        raise ConfigError(f"{where}: {value!r} contains a NUL byte, which no path can hold; remove it")
    try:
        return found(resolve_path(value)) if is_local_ref(value) else None
    except RuntimeError:  # expanduser: "Could not determine home directory"
        user = value.split("/", 1)[0]
        raise ConfigError(f"{where}: {value!r} starts with {user!r}, but there is no such user or home folder; "
                          "write the path out in full") from None
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise ConfigError(f"{where}: a path of {len(value)} characters is too long for the file system; "
                              f"shorten it (it starts {value[:40]!r})") from None
        raise ConfigError(f"{where}: {value[:200]!r} cannot be checked ({err.strerror}); fix its permissions or "
                          "give another path") from None


def check_simplex(where: str, weights: list[float], tol: float = 1e-6) -> None:
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise ConfigError(f"{where}: weights must be finite numbers (got {weights})")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > tol:
        raise ConfigError(f"{where}: weights must be >= 0 and sum to 1 (got {weights}, sum {sum(weights):.6g})")


def _number(where: str, name: str, value: float) -> None:
    """What every numeric check starts with: a finite number, and a count no larger than MAX_COUNT."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}.{name}: must be a finite number (got {value})")
    if isinstance(value, int) and value > MAX_COUNT:
        raise ConfigError(f"{where}.{name}: must be at most {MAX_COUNT:,} (got {value}); no count comes near it, "
                          "so this is likely a typo")


def positive(where: str, name: str, value: float) -> None:
    _number(where, name, value)
    if not value > 0:
        raise ConfigError(f"{where}.{name}: must be > 0 (got {value})")


def nonnegative(where: str, name: str, value: float, meaning_of_zero: str = "") -> None:
    _number(where, name, value)
    if not value >= 0:
        raise ConfigError(f"{where}.{name}: must be >= 0{f' ({meaning_of_zero})' if meaning_of_zero else ''} "
                          f"(got {value})")


def in_range(where: str, name: str, value: float, low: float, high: float) -> None:
    """low <= value <= high; the bounds, not MAX_COUNT, limit the value (a seed may exceed MAX_COUNT)."""
    if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        raise ConfigError(f"{where}.{name}: must lie in [{low}, {high}] (got {value})")


def check_names(where: str, names: list[str], example: str) -> None:
    """A list of names that must hold at least one non-blank name (LoRA target modules)."""
    if not names or not all(n.strip() for n in names):
        raise ConfigError(f"{where}: needs at least one non-empty name, e.g. {example} (got {names!r})")
