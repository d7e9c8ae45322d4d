"""Several processes under torchrun (gloo on CPU): DDP training agrees across ranks; the group helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gddim.checkpoints import load_checkpoint
from gddim.distributed import (InterruptFlag, ProcessGroup, gather_rows, gather_to_rank0, process_group, run_on_rank0,
                               shard)

DDP_SCRIPT = """
import json, os, sys, torch
from safetensors.torch import save_file
import gddim
from gddim.data import load_images
from gddim.networks import NetworkConfig
from gddim.training import TrainConfig, train
torch.set_num_threads(1)
net = NetworkConfig(channels=(16, 32), attention=(False, False), layers_per_block=1, mid_attention=False,
                    norm_groups=8, dropout=0.1, gaussian_skip=0.5)
out = sys.argv[1]
r = train(gddim.CLD(), load_images("digits")[:256], out + "/run", net,
          TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup=2, ckpt_every=3, sample_nfe=4),
          {"source": "digits", "image_size": None}, progress=False)
rank = os.environ["RANK"]
save_file({k: v.contiguous() for k, v in r.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
open(f"{out}/losses{rank}.json", "w").write(json.dumps(r.losses))  # one file a rank: shared stdout interleaves
"""


def _two_ranks(tmp_path, source: str) -> subprocess.CompletedProcess:
    """Runs `source` under torchrun with 2 gloo processes, tmp_path as its argument; fails on a non-zero exit."""
    script = tmp_path / "script.py"
    script.write_text(source)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_ddp_two_gloo_processes_agree(tmp_path):
    _two_ranks(tmp_path, DDP_SCRIPT)
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.step == 3 and ckpt.meta["world_size"] == 2
    assert all(torch.equal(a[k], ckpt.tensors[f"model.{k}"]) for k in a)
    losses = [json.loads((tmp_path / f"losses{rank}.json").read_text()) for rank in range(2)]
    assert losses[0] == losses[1] and len(losses[0]) == 3  # the all-reduced mean loss of each step, on both ranks


REFUSED_FOLDER_SCRIPT = DDP_SCRIPT.split("out = sys.argv[1]")[0] + """
from gddim.errors import UserFileError
out = sys.argv[1]
open(out + "/a_file", "w").close()
try:  # rank 0 cannot make the run folder under a file: every rank must hear of it, none may wait in DDP
    train(gddim.CLD(), load_images("digits")[:64], out + "/a_file/run", net, TrainConfig(steps=2, batch_size=8),
          {"source": "digits", "image_size": None}, progress=False)
    outcome = "trained"
except UserFileError as err:
    outcome = "refused: " + str(err).split(" (")[0]
open(f"{out}/rank{os.environ['RANK']}.txt", "w").write(outcome)
"""


def test_a_folder_rank0_cannot_make_stops_every_rank(tmp_path):
    _two_ranks(tmp_path, REFUSED_FOLDER_SCRIPT)
    expected = f"refused: cannot make the folder {tmp_path}/a_file/run"
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)] == [expected, expected]


GROUP_SCRIPT = """
import sys, torch
from gddim.distributed import from_rank0, gather_rows, gather_to_rank0, process_group, run_on_rank0, shard

def refuse():
    raise FileExistsError("rank 0 refused")

with process_group("cpu") as group:
    items = shard(7, group)
    gathered = gather_rows(torch.arange(7.0)[items.start:items.stop, None].repeat(1, 2), group)
    word = from_rank0(f"from rank {group.rank}", group.world)
    parts = gather_to_rank0(torch.full((2,), 10.0 * group.rank), group)
    collected = None if parts is None else torch.cat(parts).tolist()
    try:
        run_on_rank0(group, refuse)
        raised = None
    except FileExistsError as err:
        raised = str(err)
    line = " ".join(map(str, ("rank", group.rank, group.world, list(items), gathered[:, 1].tolist(), word, raised,
                              collected)))
    open(f"{sys.argv[1]}/rank{group.rank}.txt", "w").write(line)  # one file a rank: shared stdout interleaves
"""


def test_group_helpers_on_two_gloo_processes(tmp_path):
    _two_ranks(tmp_path, GROUP_SCRIPT)
    lines = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]
    everything = [float(i) for i in range(7)]
    assert lines == [f"rank 0 2 [0, 1, 2, 3] {everything} from rank 0 rank 0 refused [0.0, 0.0, 10.0, 10.0]",
                     f"rank 1 2 [4, 5, 6] {everything} from rank 0 rank 0 refused None"]


def test_a_single_process_is_a_group_of_one(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with process_group("cpu") as group:
        assert (group.rank, group.world, group.device, group.is_main) == (0, 1, torch.device("cpu"), True)
        assert shard(5, group) == range(5)
        rows = torch.randn(5, 3)
        assert gather_rows(rows, group) is rows
        assert gather_to_rank0(rows, group) == [rows]
        assert run_on_rank0(group, lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(FileExistsError, match="refused"):
            run_on_rank0(group, refuse)


def refuse():
    raise FileExistsError("refused")


@pytest.mark.parametrize("n, world, sizes", [(7, 3, [3, 2, 2]), (2, 4, [1, 1, 0, 0]), (8, 4, [2, 2, 2, 2])])
def test_shards_are_contiguous_and_cover_every_item_once(n, world, sizes):
    shards = [shard(n, ProcessGroup(rank, world, torch.device("cpu"), False)) for rank in range(world)]
    assert [len(s) for s in shards] == sizes and [i for s in shards for i in s] == list(range(n))


def test_a_stop_signal_sets_the_flag_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with InterruptFlag() as interrupt:
        assert not interrupt.raised
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.raised and interrupt.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
