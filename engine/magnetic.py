"""`engine.magnetic`, the public name of magnetic mirror descent on finite games, which live in
engine/theory/magnetic.py (see docs/methods/)."""

from engine.theory.magnetic import *  # noqa: F401, F403
