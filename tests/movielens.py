"""A MovieLens-format release made by the tests: ``movies.csv``, ``ratings.csv`` and ``posters/``.

The layout of ``ml-latest-small`` (plus the posters folder the importer expects, since MovieLens ships
no images). Users like two genres each and rate what they like higher, so clicks (rating >= 4) carry a
signal a preference model can learn; posters are drawn per genre. No oracle: like real data, nothing
records why a user clicked.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")
COLORS = ((200, 40, 40), (240, 200, 40), (60, 90, 160), (30, 30, 30), (230, 120, 170), (40, 200, 210))
WORDS = ("Night", "River", "Stranger", "Summer", "Machine", "Garden", "Last", "Silent", "Golden", "Storm")


def write_movielens(
    folder: Path, *, movies: int = 240, users: int = 80, first_day: dt.date = dt.date(2026, 11, 1),
    days: int = 14, ratings_per_user_day: int = 4, seed: int = 0,
) -> Path:  # fmt: skip
    """Write the release under ``folder``; ratings fall on ``days`` days from ``first_day`` (UTC)."""
    rng = np.random.default_rng(seed)
    (folder / "posters").mkdir(parents=True, exist_ok=True)
    genre_of = rng.integers(0, len(GENRES), size=movies)
    with (folder / "movies.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["movieId", "title", "genres"])
        for n in range(movies):
            second = GENRES[(genre_of[n] + 1 + n % 3) % len(GENRES)]
            title = f"The {WORDS[n % len(WORDS)]} {WORDS[(n // len(WORDS)) % len(WORDS)]} {n}, Part {n % 4 + 1} ({1980 + n % 40})"
            writer.writerow([n + 1, title, f"{GENRES[genre_of[n]]}|{second}"])
            _poster(folder / "posters" / f"{n + 1}.jpg", genre_of[n], rng)
    likes = [set(rng.choice(len(GENRES), size=2, replace=False).tolist()) for _ in range(users)]
    start = int(dt.datetime(first_day.year, first_day.month, first_day.day, tzinfo=dt.UTC).timestamp())
    with (folder / "ratings.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for day in range(days):
            for user in range(users):
                for movie in rng.choice(movies, size=ratings_per_user_day, replace=False):
                    liked = genre_of[movie] in likes[user]
                    rating = float(
                        np.clip(np.round((4.3 if liked else 2.6) + rng.normal(0, 0.7), 0) / 1, 1, 5)
                    )
                    when = start + day * 86_400 + int(rng.integers(0, 86_400))
                    writer.writerow([user + 1, int(movie) + 1, rating, when])
    return folder


def _poster(path: Path, genre: int, rng: np.random.Generator) -> None:
    image = Image.new("RGB", (48, 48), COLORS[genre])
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(4, 28, size=2))
    shade = tuple(int(c) for c in rng.integers(0, 256, size=3))
    draw.ellipse((x, y, x + 16, y + 16), fill=shade) if genre % 2 else draw.rectangle(
        (x, y, x + 16, y + 16), fill=shade
    )
    image.save(path, format="JPEG", quality=90)
