"""Chat prompts for the SmolLM2 world: requests for a movie review or opinion, built from seeded titles, genres and
plots, as the MPO paper's sentiment-and-conciseness task in chat form.

Each request is rendered with the model's own chat template (system turn, user turn, open assistant turn), so the
prompt column is exactly the text the model continues; the plain request is kept beside it for display. Titles never
repeat within a world, so the train, preference-test and evaluation splits share no film.
"""

from __future__ import annotations

import random

import pandas as pd

GENRES = ("science-fiction", "horror", "romantic comedy", "crime drama", "western", "animated", "war", "musical",
          "documentary", "thriller", "fantasy", "sports drama", "mystery", "heist", "coming-of-age", "disaster")
_TITLE_FIRST = ("The Last", "Silent", "Broken", "Midnight", "Golden", "Crimson", "Hollow", "Paper", "Electric",
                "Distant", "Frozen", "Burning", "Little", "Second", "Velvet", "Iron", "Glass", "Wild", "Quiet",
                "Forgotten", "Northern", "Salt", "Neon", "Lonely", "Hidden", "Restless")
_TITLE_SECOND = ("Harbor", "Garden", "Signal", "Kingdom", "Highway", "Orchard", "Lighthouse", "Summer", "Machine",
                 "River", "Mirror", "Frontier", "Circus", "Letters", "Station", "Island", "Crown", "Empire", "Echo",
                 "Orbit", "Canyon", "Parade", "Winter", "Engine")
_HEROES = ("a retired detective", "two estranged sisters", "a young pilot", "a small-town baker", "an android",
           "a struggling musician", "a grieving widower", "a group of teenagers", "a ship's cook", "a chess prodigy",
           "a disgraced surgeon", "a family of farmers", "a lonely astronaut", "an aging boxer", "a street magician")
_PLOTS = ("tries to win back a lost love", "uncovers a conspiracy in the city government", "must survive a long "
          "winter", "searches for a missing brother", "plans one last robbery", "travels across the country by "
          "train", "fights to save a failing theatre", "discovers a door to another world", "trains for a "
          "championship", "is haunted by a voice on the radio", "leads a rebellion against a tyrant", "returns home "
          "after twenty years")
_REQUESTS = ("Write a short review of the {genre} film \"{title}\", in which {hero} {plot}.",
             "What did you think of \"{title}\", the {genre} movie where {hero} {plot}?",
             "Give your opinion of the {genre} film \"{title}\": {hero} {plot}.",
             "A friend asks whether \"{title}\" is worth watching. It is a {genre} film in which {hero} {plot}. "
             "What do you say?",
             "Review the movie \"{title}\" ({genre}), the story of how {hero} {plot}.",
             "In one sentence, what is your opinion of \"{title}\", a {genre} film in which {hero} {plot}?",
             "Is \"{title}\" a good movie? It is a {genre} film in which {hero} {plot}.")


def movie_requests(n: int, seed: int) -> list[str]:
    """`n` distinct requests; every title is used once (26 x 24 = 624 titles at most)."""
    titles = [f"{a} {b}" for a in _TITLE_FIRST for b in _TITLE_SECOND]
    if n > len(titles):
        raise ValueError(f"at most {len(titles)} distinct prompts, asked for {n}")
    rng = random.Random(seed)
    rng.shuffle(titles)
    return [rng.choice(_REQUESTS).format(title=title, genre=rng.choice(GENRES), hero=rng.choice(_HEROES),
                                         plot=rng.choice(_PLOTS)) for title in titles[:n]]


def render_chat(tokenizer, requests: list[str]) -> list[str]:
    """Each request as one user turn with the assistant's turn opened: the text the model continues."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                          add_generation_prompt=True) for request in requests]


def prompt_frame(tokenizer, requests: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"prompt": render_chat(tokenizer, requests), "request": requests})
