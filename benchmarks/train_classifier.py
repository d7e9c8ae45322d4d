"""Train the FeatureNet classifiers that define the Fréchet distance of BENCHMARKS.md §2 (CPU, minutes).

    python benchmarks/train_classifier.py                 # every entry of RUNS
    python benchmarks/train_classifier.py --only digits_8

Writes src/gddim/weights/{name}.safetensors (float32, architecture in the metadata) and {name}.json
(test accuracy, seed, epochs, the command). Fashion-MNIST at 16x16 is area-downsampled from 28x28.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gddim.atomic import write_json
from gddim.data import load_images, load_labels
from gddim.metrics import FeatureNet

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "src" / "gddim" / "weights"
SEED = 0
BATCH_SIZE = 128
LR = 2e-3
LABEL_SMOOTHING = 0.1
# name: (data set, image size, epochs); epochs keep the whole run within a few CPU minutes
RUNS = {
    "digits_8": ("digits", 8, 40),
    "fashion-mnist_16": ("fashion-mnist", 16, 4),
}


def accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predicted = torch.cat([net(chunk).argmax(dim=1) for chunk in images.split(1000)])
    return float((predicted == labels).double().mean())


def train(name: str, dataset: str, image_size: int, epochs: int, command: str, out_dir: Path = WEIGHTS_DIR) -> dict:
    x_train, y_train = load_images(dataset, "train", image_size), load_labels(dataset, "train")
    x_test, y_test = load_images(dataset, "test", image_size), load_labels(dataset, "test")
    torch.manual_seed(SEED)
    net = FeatureNet(channels=x_train.shape[1], image_size=image_size)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
    total = epochs * steps_per_epoch
    # cosine decay to zero: a short run still ends at a settled minimum
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    start = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        perm = torch.from_numpy(np.random.default_rng([SEED, epoch]).permutation(len(x_train)))
        for idx in perm.split(BATCH_SIZE):
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"{name}: epoch {epoch + 1}/{epochs} last loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - start
    net.eval()
    record = {
        "name": name,
        "dataset": dataset,
        "image_size": image_size,
        "resized": dataset == "fashion-mnist" and image_size != 28,
        "test_accuracy": round(accuracy(net, x_test, y_test), 4),
        "train_accuracy": round(accuracy(net, x_train, y_train), 4),
        "train_images": len(x_train),
        "test_images": len(x_test),
        "seed": SEED,
        "epochs": epochs,
        "batch_size": BATCH_SIZE,
        "lr": LR,
        "optimizer": "Adam, cosine decay to 0",
        "label_smoothing": LABEL_SMOOTHING,
        "dropout": net.dropout.p,
        **net.config(),
        "num_features": net.num_features,
        "train_seconds": round(seconds, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, cpu",
        "command": command,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out_dir / f"{name}.safetensors"), metadata={k: str(v) for k, v in net.config().items()})
    write_json(out_dir / f"{name}.json", record, indent=2)
    print(json.dumps(record), flush=True)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(RUNS), action="append", help="train only these (repeatable)")
    parser.add_argument("--epochs", type=int, help="instead of each entry's own (a smoke test's size)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder of the weights (default: the shipped ones)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/train_classifier.py", *(sys.argv[1:] if argv is None else argv)])
    for name in args.only or RUNS:
        dataset, image_size, epochs = RUNS[name]
        train(name, dataset, image_size, args.epochs or epochs, command=command, out_dir=args.out)


if __name__ == "__main__":
    main()
