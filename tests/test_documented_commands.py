"""Every command of README.md and benchmarks/README.md runs, at smoke size, and so does every benchmark script.

The commands are read from the fenced code blocks of the two files. SMOKE maps each documented command to the
flags that make it tiny (given after the documented ones, so they win); a command without an entry fails here,
so a newly documented command needs one. Paths under runs/ and benchmarks/ (outputs, run folders) are moved
into a temporary folder and configs/ paths are read from the repository. `gddim` and `python benchmarks/X.py`
run in this process (their `main(argv)`); torchrun runs as its own process group.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gddim.cli import main as gddim_main
from gddim.data import DataError, load_labels

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "benchmarks/README.md")
NOT_RUN = {"pip install": "installs packages: CI's .ci/run does that before the tests",
           "python -m pytest": "the test suite, which holds this test"}
TRAINED_DIGITS = "OMP_NUM_THREADS=1 python benchmarks/trained_models.py --dataset digits"
CIFAR_TRAIN = ("torchrun --standalone --nproc_per_node=8 -m gddim train --config configs/cifar10_cld_paper.json "
               "--data cifar10:/path/to/cifar-10-batches-py --out runs/cifar10_cld_paper")
CIFAR_NODES_TRAIN = ("torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT --nproc_per_node=8 "
                     "-m gddim train --config configs/cifar10_cld_paper.json --batch 8 "
                     "--data cifar10:/path/to/cifar-10-batches-py --out runs/cifar10_cld_paper")
# the commands for several nodes on this one: 1 node of 2 processes, the rendezvous on a free local port
ON_ONE_NODE = (("--nnodes=2", "--nnodes=1"), ("--rdzv_endpoint=HOST:PORT", "--rdzv_endpoint=localhost:0"),
               ("--nproc_per_node=8", "--nproc_per_node=2"))
# the 50k evaluation at smoke size, on the smoke training run's digits
EVALUATE_SMOKE = ("--nfe", "5", "--num-samples", "4", "--batch", "4", "--shard-size", "2", "--data", "digits")
# trained_models.py at smoke size: 2 training steps, 4 samples per score, NFE 5 (baselines 10), claims up to NFE 10
TRAINED_SMOKE = ("--steps", "2", "--batch", "8", "--n", "4", "--eval-batch", "4", "--nfes", "5", "--long-nfes", "10",
                 "--claims-n", "4", "--claims-seeds", "2", "--claims-max-nfe", "10", "--device", "cpu", "--quiet")
FASHION_OUT = ("--out", "benchmarks/trained_fashion-mnist")  # the script's default folder holds measured results
PEERS_SMOKE = ("--nfe", "5", "--batch", "4", "--n-data", "100", "--rtol", "1e-6")
PEERS_DIGITS = "python benchmarks/peers.py --dataset digits --out benchmarks/peers_digits"
PEERS_FASHION = ("python benchmarks/peers.py --dataset fashion-mnist --image-size 16 --n-data 2000 --out "
                 "benchmarks/peers_fashion-mnist")
VP_DEFAULTS_SMOKE = ("--rtol", "1e-6", "--grids", "quadratic,trailing", "--samplers", "gddim,gddim:q=2")
QUICKSTART = "gddim quickstart --out runs/quickstart"
TUNE_QUICKSTART = "gddim tune-grid runs/quickstart/run --nfe 5 --out runs/quickstart/g5.json"
FAST_VARIANTS_SMOKE = ("--processes", "vp", "--batch", "4", "--rtol", "1e-4")


@dataclass(frozen=True)
class Smoke:
    """How a documented command runs at smoke size."""

    flags: tuple[str, ...] = ()  # appended to the command (argparse: the last value of a flag wins)
    replace: tuple[tuple[str, str], ...] = ()  # (documented word, smoke word): options before the program, placeholders
    drop: tuple[str, ...] = ()  # flags left out with their value (with the reason beside the entry)
    needs: str | None = None  # data or packages that may be absent: the command is skipped without them
    after: str | None = None  # a documented command whose output this one reads
    slow: bool = False  # behind the slow marker: what it runs is run by another entry, on digits or in-process


SMOKE = {
    QUICKSTART: Smoke(("--steps", "2", "--num-samples", "8")),
    "python benchmarks/tune_default_grids.py":
        Smoke(("--batch", "4", "--candidates", "8", "--max-steps", "3", "--processes", "vp", "--out",
               "benchmarks/tuned_default_grids")),
    # RUN: the quickstart's 2-step model, whose stiff ODE a loose trained-model tolerance keeps to seconds
    "python benchmarks/tuned_grids/measure.py --run RUN":
        Smoke(("--batch", "4", "--tune-batch", "4", "--candidates", "8", "--nfes", "5", "--processes", "vp",
               "--trained-rtol", "1e-1", "--out", "benchmarks/tuned_grids/results.json"),
              replace=(("RUN", "runs/quickstart/run"),), after=QUICKSTART),
    # a grid tuned to the quickstart's model, then the default sampler on it and on the quadratic grid
    TUNE_QUICKSTART: Smoke(("--batch", "2", "--candidates", "12", "--rtol", "1e-1"), after=QUICKSTART),
    **{f"gddim evaluate runs/quickstart/run --grid {grid} --samplers gddim --nfe 5 --num-samples 500 --out "
       f"runs/quickstart/ev5_{name}": Smoke(("--num-samples", "4", "--batch", "4"), after=TUNE_QUICKSTART)
       for grid, name in (("runs/quickstart/g5.json", "tuned"), ("quadratic", "quadratic"))},
    "OMP_NUM_THREADS=1 python benchmarks/fast_variants.py --out benchmarks/fast_variants_digits":
        Smoke(FAST_VARIANTS_SMOKE + ("--nfes", "5")),
    "OMP_NUM_THREADS=1 python benchmarks/fast_variants.py --shortlist --batch 256 --out "
    "benchmarks/fast_variants_digits/shortlist": Smoke(FAST_VARIANTS_SMOKE + ("--nfes", "5", "10")),
    "OMP_NUM_THREADS=1 python benchmarks/fast_variants.py --goal --batch 256 --nfes 10 20 --out "
    "benchmarks/fast_variants_digits/goal": Smoke(FAST_VARIANTS_SMOKE + ("--nfes", "10")),
    "OMP_NUM_THREADS=1 python benchmarks/fast_variants.py --goal --batch 256 --nfes 10 20 --dataset fashion-mnist "
    "--image-size 16 --n-data 2000 --out benchmarks/fast_variants_fashion-mnist":
        Smoke(FAST_VARIANTS_SMOKE + ("--nfes", "10", "--n-data", "50"), needs="fashion-mnist"),
    "OMP_NUM_THREADS=1 python benchmarks/trained_models.py --dataset digits --stages train --processes cld --steps 1000 "
    "--quiet": Smoke(TRAINED_SMOKE + ("--out", "benchmarks/trained_digits")),
    "OMP_NUM_THREADS=1 python benchmarks/trained_defaults.py --dataset digits":
        Smoke(("--n", "4", "--seeds", "2", "--processes", "cld", "--out", "benchmarks/trained_digits"),
              after=TRAINED_DIGITS),
    "OMP_NUM_THREADS=1 python benchmarks/angle_grid.py --out benchmarks/angle_grid":
        Smoke(("--datasets", "digits", "--n-data", "50", "--batch", "4")),
    # the quickstart's 2-step CLD model stands in for each process's trained run
    "OMP_NUM_THREADS=1 python benchmarks/angle_grid.py --out benchmarks/angle_grid --runs VP_RUN CLD_RUN BDM_RUN":
        Smoke(("--n", "4"), replace=tuple((f"{p}_RUN", "runs/quickstart/run") for p in ("VP", "CLD", "BDM")),
              after=QUICKSTART),
    "OMP_NUM_THREADS=1 python benchmarks/grid_scan.py --out benchmarks/grid_scan/results.json":
        Smoke(("--datasets", "digits", "--n-data", "50", "--batch", "4", "--nfes", "10", "--rtol", "1e-5")),
    "OMP_NUM_THREADS=1 python benchmarks/bdm_gap.py --out benchmarks/bdm_gap":
        Smoke(("--n-data", "50", "--batch", "4", "--nfe", "10"), needs="fashion-mnist"),
    PEERS_DIGITS: Smoke(PEERS_SMOKE),
    PEERS_FASHION: Smoke(PEERS_SMOKE, needs="fashion-mnist", slow=True),
    "python benchmarks/peers.py --overhead --out benchmarks/peers_overhead.json": Smoke(("--quick",)),
    # reads the smoke-size peers run (its data, batch, seed and NFEs) that the entry named in `after` writes
    "python benchmarks/vp_defaults.py --peers benchmarks/peers_digits/results.json --out "
    "benchmarks/vp_defaults/digits.json": Smoke(VP_DEFAULTS_SMOKE, after=PEERS_DIGITS),
    "python benchmarks/vp_defaults.py --peers benchmarks/peers_fashion-mnist/results.json --out "
    "benchmarks/vp_defaults/fashion-mnist.json": Smoke(VP_DEFAULTS_SMOKE, needs="fashion-mnist", after=PEERS_FASHION,
                                                       slow=True),
    "python benchmarks/peers_flow.py --dataset digits --out benchmarks/peers_flow_digits": Smoke(PEERS_SMOKE),
    "gddim bench exact --dataset digits --out benchmarks/exact_digits --threads 1":
        Smoke(("--quick", "--data-points", "100", "--nfes", "5", "10", "--batch", "4", "--rtol", "1e-6")),
    "gddim bench coefficients --out benchmarks/coefficients --threads 1":
        Smoke(("--nfes", "10", "--repeats", "1", "--bdm-image-size", "8")),
    TRAINED_DIGITS: Smoke(TRAINED_SMOKE + ("--out", "benchmarks/trained_digits")),
    "OMP_NUM_THREADS=1 python benchmarks/trained_models.py --dataset digits --stages claims":
        Smoke(TRAINED_SMOKE + ("--out", "benchmarks/trained_digits"), after=TRAINED_DIGITS),
    "python benchmarks/trained_models.py --throughput":
        Smoke(("--steps", "11", "--batch", "4", "--repeats", "1", "--out", "benchmarks/trained_digits"), slow=True),
    "OMP_NUM_THREADS=1 python benchmarks/numerics.py --out benchmarks/numerics": Smoke(("--quick",)),
    "OMP_NUM_THREADS=1 python benchmarks/loop_overhead.py --out benchmarks/loop_overhead.json": Smoke(("--quick",)),
    **{loop: Smoke(TRAINED_SMOKE + FASHION_OUT, needs="fashion-mnist", slow=True) for loop in (
        "for p in vp cld bdm; do python benchmarks/trained_models.py --dataset fashion-mnist --image-size 16 "
        "--preset small --batch 128 --lr 5e-4 --ema 0.9995 --steps 8000 --device cuda --processes $p --stages train "
        "& done; wait",
        "for p in vp cld bdm; do python benchmarks/trained_models.py --dataset fashion-mnist --image-size 16 "
        "--preset small --device cuda --n 1000 --eval-batch 1000 --processes $p --stages sweep & done; wait")},
    "for p in vp cld bdm; do OMP_NUM_THREADS=1 python benchmarks/trained_models.py --dataset fashion-mnist "
    "--image-size 16 --preset tiny --steps 2000 --batch 64 --lr 1e-3 --device cpu --n 250 --nfes 5,10,20,50,100 "
    "--long-nfes 200,1000 --processes $p --stages train,sweep --out benchmarks/trained_fashion-mnist-tiny & done; "
    "wait": Smoke(TRAINED_SMOKE, needs="fashion-mnist", slow=True),
    "python benchmarks/trained_models.py --dataset fashion-mnist --image-size 16 --preset small --device cuda "
    "--claims-n 2000 --claims-seeds 3 --processes vp --stages claims":
        Smoke(TRAINED_SMOKE + FASHION_OUT, needs="fashion-mnist", slow=True),
    # the paper's CIFAR-10 setting on digits with the tiny network: torchrun, the config file and DDP (gloo) as written
    CIFAR_TRAIN: Smoke(("--data", "digits", "--preset", "tiny", "--steps", "2", "--batch", "4", "--ckpt-every", "1",
                        "--no-progress"), replace=(("--nproc_per_node=8", "--nproc_per_node=2"),)),
    # several nodes, as one node of two processes: the rendezvous on a free local port
    CIFAR_NODES_TRAIN: Smoke(("--data", "digits", "--preset", "tiny", "--steps", "2", "--batch", "4", "--ckpt-every", "1",
                              "--no-progress", "--out", "runs/cifar10_cld_paper_nodes"), replace=ON_ONE_NODE, slow=True),
    # --inception needs torch-fidelity's weights file, which nothing here may download; the rest runs as written
    "gddim evaluate runs/cifar10_cld_paper --samplers gddim:q=2 --nfe 50 --num-samples 50000 --batch 1000 --device cuda "
    "--data cifar10:/path/to/cifar-10-batches-py --inception /path/to/weights-inception-2015-12-05-6726825d.pth "
    "--out runs/cifar10_cld_paper/fid50k": Smoke(EVALUATE_SMOKE + ("--device", "cpu"), drop=("--inception",),
                                                 after=CIFAR_TRAIN),
    "torchrun --standalone --nproc_per_node=8 -m gddim evaluate runs/cifar10_cld_paper --samplers gddim:q=2 --nfe 50 "
    "--num-samples 50000 --batch 1000 --data cifar10:/path/to/cifar-10-batches-py "
    "--inception /path/to/weights-inception-2015-12-05-6726825d.pth --out runs/cifar10_cld_paper/fid50k":
        Smoke(EVALUATE_SMOKE, replace=(("--nproc_per_node=8", "--nproc_per_node=2"),), drop=("--inception",),
              after=CIFAR_TRAIN),
    "torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT --nproc_per_node=8 -m gddim "
    "evaluate runs/cifar10_cld_paper --samplers gddim:q=2 --nfe 50 --num-samples 50000 --batch 1000 "
    "--data cifar10:/path/to/cifar-10-batches-py --inception /path/to/weights-inception-2015-12-05-6726825d.pth "
    "--out runs/cifar10_cld_paper/fid50k": Smoke(EVALUATE_SMOKE, replace=ON_ONE_NODE, drop=("--inception",),
                                                 after=CIFAR_TRAIN, slow=True),
    "python benchmarks/sampling_throughput.py --out benchmarks/sampling_throughput":
        Smoke(("--num-samples", "8", "--batch", "4", "--shard-size", "4", "--nfe", "4", "--repeats", "1")),
}
# benchmark scripts that no README block runs: (command, the documented command whose output it reads)
UNDOCUMENTED = {
    "benchmarks/train_classifier.py": ("python benchmarks/train_classifier.py --only digits_8 --epochs 1 --out "
                                       "benchmarks/classifier_weights", None),
    "benchmarks/fp16_weights.py": ("python benchmarks/fp16_weights.py --quick --runs benchmarks/trained_digits/runs "
                                   "--out benchmarks/fp16_weights.json", TRAINED_DIGITS),
}
LOOP = re.compile(r"for (\w+) in ([^;]+); do (.+) & done; wait")


def documented_commands() -> dict[str, list[str]]:
    """Each command line of the fenced (non-Python) blocks, comments and line continuations removed, mapped to
    the commands it runs (a `for` loop over processes runs its body once per value)."""
    commands = {}
    for document in DOCUMENTS:
        inside, language, pending = False, "", ""
        for line in (ROOT / document).read_text().splitlines():
            if line.startswith("```"):
                inside, language = not inside, line[3:].strip()
                continue
            if not inside or language == "python":
                continue
            pending += " " + re.sub(r"(^|\s)#.*", "", line)
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            text, pending = " ".join(pending.split()), ""
            loop = LOOP.fullmatch(text)
            if loop:
                commands[text] = [loop[3].replace("$" + loop[1], value) for value in loop[2].split()]
            else:
                commands.update((part, [part]) for part in text.split(" && ") if part)
    return {text: runs for text, runs in commands.items() if not any(text.startswith(p) for p in NOT_RUN)}


COMMANDS = documented_commands()


def _available(need: str | None) -> bool:
    if need == "fashion-mnist":
        try:
            load_labels("fashion-mnist", "test")
        except DataError:
            return False
    return True


def smoke_words(command: str, smoke: Smoke, workspace: Path) -> list[str]:
    """The command's words at smoke size, with its output paths moved into the workspace."""
    words = shlex.split(command)
    while "=" in words[0]:  # an environment setting such as OMP_NUM_THREADS=1: the tests already run on one thread
        words = words[1:]
    replaced = dict(smoke.replace)
    words = [replaced.get(w, w) for w in words]
    for flag in smoke.drop:
        at = words.index(flag)
        del words[at:at + 2]
    moved = []
    for word in words + list(smoke.flags):
        if word.startswith(("runs/", "benchmarks/")) and not word.endswith(".py"):
            word = str(workspace / word)
        elif word.startswith("configs/"):
            word = str(ROOT / word)
        moved.append(word)
    outputs = [value for flag, value in zip(moved, moved[1:]) if flag == "--out"]
    assert outputs and all(Path(v).is_relative_to(workspace) for v in outputs), \
        f"{command!r} at smoke size must write into the test's folder: give it --out under runs/ or benchmarks/"
    return moved


def run_words(words: list[str], workspace: Path) -> None:
    if words[0] == "gddim":
        assert gddim_main(words[1:]) == 0
    elif words[0] == "python" and words[1].startswith("benchmarks/"):
        spec = importlib.util.spec_from_file_location(Path(words[1]).stem, ROOT / words[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.main(words[2:]) in (0, None)
    elif words[0] == "torchrun":
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *words[1:]], cwd=workspace, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    else:
        pytest.fail(f"no way to run {shlex.join(words)!r}: teach run_words how")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder shared by the commands of this module, and the commands that have run in it."""
    return tmp_path_factory.mktemp("documented"), set()


def run_documented(command: str, workspace) -> None:
    folder, done = workspace
    smoke = SMOKE[command]
    if smoke.after and smoke.after not in done:
        run_documented(smoke.after, workspace)
    if not _available(smoke.needs):
        pytest.skip(f"{smoke.needs} is not installed here")
    for each in COMMANDS[command]:
        run_words(smoke_words(each, smoke, folder), folder)
    done.add(command)


def test_every_documented_command_has_a_smoke_entry():
    missing = sorted(set(COMMANDS) - set(SMOKE))
    assert not missing, f"documented commands without a smoke entry in SMOKE: {missing}"
    stale = sorted(set(SMOKE) - set(COMMANDS))
    assert not stale, f"SMOKE entries no README documents any more: {stale}"


def test_every_benchmark_script_is_run():
    documented = {word for runs in COMMANDS.values() for run in runs for word in shlex.split(run)}
    scripts = {f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("*.py")}
    missing = sorted(scripts - documented - set(UNDOCUMENTED))
    assert not missing, f"benchmark scripts that neither a README block nor UNDOCUMENTED runs: {missing}"


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("command", [pytest.param(c, marks=[pytest.mark.slow] if c in SMOKE and SMOKE[c].slow else [])
                                     for c in COMMANDS])
def test_documented_command_runs(command, workspace):
    if command not in SMOKE:
        pytest.fail(f"no smoke entry for the documented command {command!r}")
    run_documented(command, workspace)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("script", list(UNDOCUMENTED))
def test_undocumented_benchmark_script_runs(script, workspace):
    command, after = UNDOCUMENTED[script]
    if after and after not in workspace[1]:
        run_documented(after, workspace)
    run_words(smoke_words(command, Smoke(), workspace[0]), workspace[0])
