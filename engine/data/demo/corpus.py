"""Synthetic movie reviews: the offline stand-in for IMDb in the MPO paper's sentiment/conciseness task.

Each review is drawn from a small grammar with a star-rating style label chosen *first*; the text is then written
to express it (openers, plot summaries, opinions on aspects, a verdict), with negation ("not bad"), intensifiers
("truly superb"), mixed "but" sentences and a minority of opinions that go against the label, as real reviews do.
The label is the generator's intent, not a re-reading of the text, so the lexicon judge (engine/judges.py) reading
the surface text agrees with it only as far as the grammar and the judge's negation handling really line up.

The sentiment lexicon lives here and only here: the generator writes with it and the judge reads with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.errors import InputError

# Word -> polarity weight. Graded like classic lexicons (e.g. AFINN): strong words weigh 2, mild ones 0.5.
POSITIVE_WORDS: dict[str, float] = {
    "good": 1.0, "great": 1.5, "excellent": 2.0, "wonderful": 2.0, "brilliant": 2.0, "superb": 2.0,
    "beautiful": 1.5, "enjoyable": 1.0, "funny": 1.0, "moving": 1.0, "clever": 1.0, "gripping": 1.5,
    "charming": 1.0, "solid": 0.5, "touching": 1.0, "fantastic": 2.0, "amazing": 2.0, "impressive": 1.5,
    "convincing": 1.0, "fresh": 0.5, "loved": 1.5, "enjoyed": 1.0, "liked": 1.0, "adored": 2.0,
    "masterpiece": 2.0, "gem": 1.5, "joy": 1.5, "treat": 1.0, "recommend": 1.0, "recommended": 1.0,
    "worth": 1.0, "gladly": 1.0, "love": 1.5, "enjoy": 1.0, "like": 1.0, "adore": 2.0,
}
NEGATIVE_WORDS: dict[str, float] = {
    "bad": -1.0, "boring": -1.5, "awful": -2.0, "terrible": -2.0, "dull": -1.0, "weak": -1.0, "poor": -1.0,
    "predictable": -1.0, "disappointing": -1.5, "forgettable": -1.0, "annoying": -1.0, "silly": -0.5,
    "slow": -0.5, "clumsy": -1.0, "horrible": -2.0, "lazy": -1.0, "confusing": -1.0, "pointless": -1.5,
    "hated": -1.5, "disliked": -1.0, "mess": -1.5, "waste": -2.0, "disaster": -2.0, "letdown": -1.5,
    "avoid": -1.5, "regret": -1.5, "skip": -1.0, "hate": -1.5, "dislike": -1.0,
}
LEXICON: dict[str, float] = {**POSITIVE_WORDS, **NEGATIVE_WORDS}
# Multiply the weight of the next sentiment word.
INTENSIFIERS: dict[str, float] = {
    "very": 1.5, "really": 1.5, "truly": 1.5, "extremely": 2.0, "incredibly": 2.0, "so": 1.5, "quite": 1.2,
    "highly": 1.5, "complete": 1.5, "utterly": 2.0, "somewhat": 0.7, "slightly": 0.5,
}
# Flip the next sentiment word (within NEGATION_SCOPE words, not past punctuation), damped: "not bad" is only
# mildly positive, "not good" mildly negative.
NEGATORS: frozenset[str] = frozenset({"not", "never", "hardly", "didn't", "don't", "wasn't", "isn't", "no"})
NEGATION_FACTOR = -0.7
NEGATION_SCOPE = 3

_POS_ADJ = ["good", "great", "excellent", "wonderful", "brilliant", "superb", "beautiful", "enjoyable", "funny",
            "moving", "clever", "gripping", "charming", "solid", "touching", "fantastic", "amazing", "impressive",
            "convincing", "fresh"]
_NEG_ADJ = ["bad", "boring", "awful", "terrible", "dull", "weak", "poor", "predictable", "disappointing",
            "forgettable", "annoying", "silly", "slow", "clumsy", "horrible", "lazy", "confusing", "pointless"]
_POS_VERB, _NEG_VERB = ["loved", "enjoyed", "liked", "adored"], ["hated", "disliked"]
_BASE_FORM = {"loved": "love", "enjoyed": "enjoy", "liked": "like", "adored": "adore", "hated": "hate",
              "disliked": "dislike"}
_POS_NOUN, _NEG_NOUN = ["masterpiece", "gem", "joy", "treat"], ["mess", "waste", "disaster", "letdown"]
_STRONG_INTENS = ["very", "really", "truly", "extremely", "incredibly", "so", "quite"]
_ATTRIBUTIVE_INTENS = [word for word in _STRONG_INTENS if word != "so"]  # "a so poor film" is not English
_ASPECTS = ["acting", "plot", "script", "soundtrack", "ending", "cast", "dialogue", "camera work", "pacing",
            "costume design", "direction", "story", "music", "lead actor", "villain", "humor", "first half",
            "final scene", "editing", "set design"]
_FILM = ["movie", "film", "picture", "sequel", "remake", "thriller", "comedy", "drama", "western", "cartoon"]
_FIRST = ["Anna", "Ben", "Carla", "David", "Elena", "Frank", "Grace", "Hugo", "Iris", "Jack", "Kate", "Leo",
          "Maria", "Nick", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor", "Walter", "Yuki", "Omar", "Lucy"]
_LAST = ["Adams", "Brooks", "Carter", "Dunn", "Ellis", "Fischer", "Gray", "Hayes", "Irwin", "Jones", "Klein",
         "Lopez", "Moreau", "Novak", "Olsen", "Price", "Quinn", "Reyes", "Stone", "Turner", "Vance", "Wells"]
_TITLE_A = ["Silent", "Last", "Crimson", "Hidden", "Broken", "Endless", "Northern", "Golden", "Lost", "Midnight",
            "Distant", "Frozen", "Burning", "Quiet", "Wild", "Second", "Empty", "Paper", "Iron", "Glass"]
_TITLE_N = ["River", "Train", "Garden", "Summer", "City", "Mountain", "Letter", "Island", "Harbor", "Road",
            "Kingdom", "Mirror", "Storm", "Winter", "Bridge", "House", "Voyage", "Signal", "Forest", "Empire"]
_GENRE = ["crime drama", "science fiction film", "romantic comedy", "war film", "horror film", "family film",
          "musical", "documentary", "mystery", "period drama", "heist film", "road movie"]
_WHEN = ["last night", "on a plane", "with my kids", "at a festival", "on television", "years ago",
         "in the cinema", "on a rainy Sunday", "with friends", "on DVD", "after work", "twice"]
_CHAR = ["a retired detective", "a young teacher", "two brothers", "a small town doctor", "an old farmer",
         "a lonely pilot", "a jazz singer", "a family of five", "a war veteran", "a stubborn journalist",
         "a teenage girl", "a group of students", "a famous chef", "an exiled prince", "a night nurse"]
_ACTION = ["searches for a missing sister", "tries to save the family farm", "returns home after twenty years",
           "hides a dangerous secret", "meets a stranger on a train", "plans one final job",
           "travels across the country", "investigates a series of thefts", "runs for mayor",
           "builds a boat in the garden", "loses everything in one night", "starts a band",
           "moves to a new city", "fights to keep the old theater open", "discovers an old diary"]
_VERDICT_POS = ["Highly recommended.", "I would recommend it to anyone.", "Well worth watching.",
                "Worth every minute.", "I would gladly watch it again.", "Truly a gem."]
_VERDICT_NEG = ["I would not recommend it.", "Not worth watching.", "Avoid it.", "A complete waste of time.",
                "I regret watching it.", "Skip this one."]
_ONE_LINERS_POS = ["Loved it.", "What a gem!", "Simply wonderful.", "A true masterpiece.", "Great fun.",
                   "Really enjoyable stuff."]
_ONE_LINERS_NEG = ["Hated it.", "What a mess!", "Simply awful.", "A total disaster.", "So boring.",
                   "Really dull stuff."]
MAX_WORDS = 80


@dataclass(frozen=True)
class Review:
    """One synthetic review; `label` is 1 for positive, 0 for negative (the generator's intent)."""

    text: str
    label: int


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _adjective_phrase(rng: np.random.Generator, sign: int, mild: bool = False) -> str:
    """A predicative phrase with polarity `sign`: plain, intensified, or a negated word of the other polarity.

    `mild` gives a plain adjective only: concessions against the label are voiced softly, as in real reviews.
    """
    own, other = (_POS_ADJ, _NEG_ADJ) if sign > 0 else (_NEG_ADJ, _POS_ADJ)
    roll = 0.0 if mild else rng.random()
    if roll < 0.45:
        return _pick(rng, own)
    if roll < 0.8:
        return f"{_pick(rng, _STRONG_INTENS)} {_pick(rng, own)}"
    if roll < 0.9:
        return f"not {_pick(rng, other)}"
    return f"never {_pick(rng, other)}" if sign > 0 else f"not very {_pick(rng, other)}"


def _attributive(rng: np.random.Generator, sign: int) -> str:
    """An adjective before a noun ("a truly superb"): negation reads badly there, so only intensifiers."""
    adj = _pick(rng, _POS_ADJ if sign > 0 else _NEG_ADJ)
    if rng.random() < 0.4:
        adj = f"{_pick(rng, _ATTRIBUTIVE_INTENS)} {adj}"
    article = "an" if adj[0] in "aeiou" else "a"
    return f"{article} {adj}"


def _opinion(rng: np.random.Generator, sign: int, mild: bool = False) -> str:
    """One sentence expressing polarity `sign` about the film or one of its aspects (`mild`: one plain word)."""
    aspect, film = _pick(rng, _ASPECTS), _pick(rng, _FILM)
    be = "was" if rng.random() < 0.7 else "is"
    if mild:
        return f"The {aspect} {be} {_adjective_phrase(rng, sign, mild=True)}."
    kind = int(rng.integers(7))
    if kind == 0:
        return f"The {aspect} {be} {_adjective_phrase(rng, sign)}."
    if kind == 1:
        return f"{_pick(rng, _FIRST)} {_pick(rng, _LAST)} gave {_attributive(rng, sign)} performance."
    if kind == 2:
        if rng.random() < 0.25:  # "didn't enjoy" = negated opposite verb
            verb = _pick(rng, _POS_VERB if sign < 0 else _NEG_VERB)
            return f"I didn't {_BASE_FORM[verb]} the {aspect}."
        return f"I {_pick(rng, _POS_VERB if sign > 0 else _NEG_VERB)} the {aspect}."
    if kind == 3:
        return f"The whole {film} {be} {_adjective_phrase(rng, sign)}."
    if kind == 4:
        return f"What {_attributive(rng, sign)} {film}!"
    if kind == 5:
        return f"This {film} is {_attributive(rng, sign)} {_pick(rng, _POS_NOUN if sign > 0 else _NEG_NOUN)}."
    other = _pick(rng, [a for a in _ASPECTS if a != aspect])
    return (f"The {aspect} {be} {_adjective_phrase(rng, sign)}, "
            f"and the {other} {be} {_adjective_phrase(rng, sign)} too.")


def _mixed(rng: np.random.Generator, sign: int) -> str:
    """A concession: a clause against the label, then "but" and a clause for it."""
    a, b = rng.choice(len(_ASPECTS), size=2, replace=False)
    be = "was" if rng.random() < 0.7 else "is"
    strong = f"{_pick(rng, _STRONG_INTENS)} {_pick(rng, _POS_ADJ if sign > 0 else _NEG_ADJ)}"
    return f"The {_ASPECTS[a]} {be} {_adjective_phrase(rng, -sign, mild=True)}, but the {_ASPECTS[b]} {be} {strong}."


def _neutral(rng: np.random.Generator) -> str:
    """Sentences without opinion words: they give the model structure to learn and the judge nothing to score."""
    kind = int(rng.integers(5))
    if kind == 0:
        return f"I watched {_pick(rng, _TITLE_A)} {_pick(rng, _TITLE_N)} {_pick(rng, _WHEN)}."
    if kind == 1:
        return (f"It is a {1950 + int(rng.integers(74))} {_pick(rng, _GENRE)} directed by "
                f"{_pick(rng, _FIRST)} {_pick(rng, _LAST)}.")
    if kind == 2:
        return f"The story follows {_pick(rng, _CHAR)} who {_pick(rng, _ACTION)}."
    if kind == 3:
        return f"It stars {_pick(rng, _FIRST)} {_pick(rng, _LAST)} and {_pick(rng, _FIRST)} {_pick(rng, _LAST)}."
    return f"The {_pick(rng, _FILM)} runs about {80 + 5 * int(rng.integers(17))} minutes."


def generate_review(rng: np.random.Generator) -> Review:
    """Draw one review: label first, then sentences that express it, capped at MAX_WORDS words."""
    label = int(rng.random() < 0.5)
    sign = 1 if label else -1
    if rng.random() < 0.12:
        return Review(_pick(rng, _ONE_LINERS_POS if label else _ONE_LINERS_NEG), label)
    sentences: list[str] = []
    if rng.random() < 0.6:
        sentences.append(_neutral(rng))
    if rng.random() < 0.5:
        sentences.append(_neutral(rng))
    # The first opinion and the verdict always carry the label; up to 20% of the middle sentences go against it,
    # mildly, and always fewer than half of them.
    sentences.append(_opinion(rng, sign))
    n_middle = int(rng.integers(0, 6))
    n_against = 0
    for _ in range(n_middle):
        roll = rng.random()
        if roll < 0.2 and n_against + 1 < n_middle - n_against:
            sentences.append(_opinion(rng, -sign, mild=True))
            n_against += 1
        elif roll < 0.35:
            sentences.append(_mixed(rng, sign))
        elif roll < 0.5:
            sentences.append(_neutral(rng))
        else:
            sentences.append(_opinion(rng, sign))
    if rng.random() < 0.7:
        sentences.append(_pick(rng, _VERDICT_POS if label else _VERDICT_NEG))
    words: list[str] = []
    for sentence in sentences:
        parts = sentence.split()
        if words and len(words) + len(parts) > MAX_WORDS:
            break
        words.extend(parts)
    return Review(" ".join(words), label)


def prompt_of(text: str, rng: np.random.Generator) -> str:
    """The review's first 2-4 words (as in IMDb continuation tasks), always leaving at least one word to continue.

    The prompt ends on a word boundary with no trailing space, so a continuation starts with a space and the
    tokenized prompt is a prefix of the tokenized prompt + continuation (TRL splits completions that way).
    """
    words = text.split()
    if len(words) < 2:
        raise InputError(f"text must have at least two words to make a prompt, got {text!r}")
    k = min(int(rng.integers(2, 5)), len(words) - 1)
    return " ".join(words[:k])


def generate_corpus(n_reviews: int, seed: int = 0) -> pd.DataFrame:
    """`n_reviews` reviews as a DataFrame with columns text, label, prompt, continuation (seeded, reproducible)."""
    if n_reviews < 1:
        raise InputError(f"n_reviews must be at least 1, got {n_reviews}")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_reviews):
        review = generate_review(rng)
        prompt = prompt_of(review.text, rng)
        rows.append({"text": review.text, "label": review.label, "prompt": prompt,
                     "continuation": review.text[len(prompt):]})
    return pd.DataFrame(rows)
