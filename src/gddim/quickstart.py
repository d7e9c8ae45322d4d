"""The quickstart: train a tiny CLD model on digits, then evaluate gDDIM and Euler-Maruyama on it."""

from __future__ import annotations

from pathlib import Path

from .data import load_images
from .errors import OutputExistsError
from .evaluation import evaluate
from .networks import preset
from .processes import CLD
from .training import TrainConfig, train

QUICKSTART_SAMPLERS = ("gddim", "gddim:q=2", "em")  # the default, the paper's q = 2, Euler-Maruyama
QUICKSTART_NFES = (10, 20, 50)


def quickstart(out_dir: str | Path, steps: int = 2000, n: int = 500, seed: int = 0, progress: bool = True) -> dict:
    """Train a tiny CLD model on digits, sample it with gDDIM (the default and the paper's q=2) and Euler-Maruyama
    at NFE 10, 20 and 50, and write the run, the grids, metrics.json and quality_vs_nfe.png into out_dir (README's
    main job)."""
    out = Path(out_dir).expanduser()
    empty_folder = out.is_dir() and not any(out.iterdir())
    if out.exists() and not empty_folder and not (out / "run").is_dir():
        raise OutputExistsError(f"{out} exists and is not a quickstart folder; choose a new one")
    images = load_images("digits")
    # the default settings, with warmup and checkpoint interval cut to fit a short run
    config = TrainConfig(steps=steps, warmup=min(TrainConfig.warmup, steps), seed=seed,
                         ckpt_every=max(1, min(TrainConfig.ckpt_every, steps)))
    result = train(CLD(), images, out / "run", preset("tiny"), config, {"source": "digits", "image_size": 8},
                   progress=progress)
    if result.interrupted:
        raise KeyboardInterrupt
    return evaluate(out / "run", list(QUICKSTART_SAMPLERS), list(QUICKSTART_NFES), n=n, seed=seed, out_dir=out,
                    progress=progress)
