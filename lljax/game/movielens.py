"""MovieLens-100k as in GDMix's published example, read from the ``recbole`` 1.2.1 wheel.

The data ship inside the wheel at ``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}``. The
wheel is fetched once with ``pip download --no-deps recbole==1.2.1`` into a cache folder, its sha256 is
checked, and the files are read from the zip; nothing else is downloaded.

GDMix's protocol (``scripts/download_process_movieLens_data.py`` in linkedin/gdmix):

- label: rating > 3;
- user features (24): age / 100, gender (M, F one-hot), occupation (21 one-hot);
- movie features (20): 19 genre indicators and release year / 2000;
- global features (44): user then movie features; the fixed effect reads them;
- per-user random effect on the movie features; per-movie random effect on the user features;
- one random 80/20 split of the ratings; lambda = 1 for every coordinate.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile

import numpy as np

from lljax.game.data import GameData

__all__ = ["RECBOLE_VERSION", "RECBOLE_SHA256", "GENRES", "OCCUPATIONS", "fetch_wheel", "load_movielens_100k",
           "GDMIX_AUC"]

RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_PREFIX = "recbole/dataset_example/ml-100k/ml-100k"
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
OCCUPATIONS = ("administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
               "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
               "retired", "salesman", "scientist", "student", "technician", "writer")
USER_FEATURES = ("age", "gender=M", "gender=F") + tuple(f"occupation={o}" for o in OCCUPATIONS)
MOVIE_FEATURES = tuple(f"genre={g}" for g in GENRES) + ("release_year",)
GDMIX_AUC = {"global": 0.6237, "per_user": 0.7058, "per_movie": 0.7599}


def default_cache_dir() -> str:
    """``$LLJAX_DATA`` or ``~/.cache/lljax``."""
    return os.environ.get("LLJAX_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "lljax")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(cache_dir: str | None = None) -> str:
    """Path of the recbole 1.2.1 wheel in ``cache_dir``, fetched with ``pip download`` when absent.

    Raises ``ValueError`` when the file's sha256 is not the expected one (the file is then removed)."""
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, RECBOLE_WHEEL)
    if not os.path.exists(path):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"recbole=={RECBOLE_VERSION}",
                        "-d", cache_dir], check=True)
    digest = _sha256(path)
    if digest != RECBOLE_SHA256:
        os.remove(path)
        raise ValueError(f"{path}: sha256 {digest} is not the expected {RECBOLE_SHA256}; the file was removed")
    return path


def _read_table(z: zipfile.ZipFile, suffix: str) -> tuple[list[str], list[list[str]]]:
    text = z.read(f"{_PREFIX}.{suffix}").decode("utf-8", errors="replace")
    lines = text.splitlines()
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    return header, [line.split("\t") for line in lines[1:] if line]


def load_movielens_100k(cache_dir: str | None = None, wheel: str | None = None) -> GameData:
    """All 100,000 ratings as :class:`GameData`, with GDMix's features (module docstring).

    Entity columns ``user_id`` and ``movie_id``; feature sets ``global`` (44), ``user`` (24) and
    ``movie`` (20), with names; label ``rating > 3``.
    """
    path = wheel or fetch_wheel(cache_dir)
    with zipfile.ZipFile(path) as z:
        _, inter_rows = _read_table(z, "inter")
        _, user_rows = _read_table(z, "user")
        _, item_rows = _read_table(z, "item")
    inter = np.loadtxt(io.StringIO("\n".join("\t".join(r[:3]) for r in inter_rows)), dtype=np.float64)
    users = inter[:, 0].astype(np.int64)
    movies = inter[:, 1].astype(np.int64)
    label = (inter[:, 2] > 3).astype(np.float64)

    # user features, indexed by user id
    max_user = max(int(r[0]) for r in user_rows)
    U = np.zeros((max_user + 1, len(USER_FEATURES)))
    occupation_col = {o: 3 + i for i, o in enumerate(OCCUPATIONS)}
    for r in user_rows:
        u = int(r[0])
        U[u, 0] = float(r[1]) / 100.0
        U[u, 1 if r[2] == "M" else 2] = 1.0
        U[u, occupation_col[r[3]]] = 1.0
    # movie features, indexed by movie id
    max_movie = max(int(r[0]) for r in item_rows)
    M = np.zeros((max_movie + 1, len(MOVIE_FEATURES)))
    genre_col = {g: i for i, g in enumerate(GENRES)}
    for r in item_rows:
        m = int(r[0])
        for g in r[3].split(" ") if len(r) > 3 else ():
            if g in genre_col:
                M[m, genre_col[g]] = 1.0
        try:
            M[m, -1] = float(r[2]) / 2000.0
        except (ValueError, IndexError):
            M[m, -1] = 0.0  # unknown year: no feature (as GDMix drops NaN values)
    Xu, Xm = U[users], M[movies]
    return GameData.from_arrays(
        label, ids={"user_id": users, "movie_id": movies},
        features={"global": np.hstack([Xu, Xm]), "user": Xu, "movie": Xm},
        feature_names={"global": USER_FEATURES + MOVIE_FEATURES, "user": USER_FEATURES, "movie": MOVIE_FEATURES})
