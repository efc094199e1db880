"""`engine.mixing`, the public name of the MPO mixing math, which live in engine/theory/mixing.py
(see docs/methods/)."""

from engine.theory.mixing import *  # noqa: F401, F403
