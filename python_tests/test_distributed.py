"""Multi-process training (issue 5): `torchrun --nproc_per_node=2 -m cure_ext.train` on CPU (gloo). The ranks
see different shards of every batch, yet end with bit-identical weights; one data-parallel CURE step equals
the one-process step on the whole batch; evaluation counts every test example once, exactly as one process
does; rank 0 alone writes and prints; a killed 2-process run resumes to the uninterrupted result."""
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cure_ext import CURESGD
from cure_ext.ranks import Ranks
from cure_ext.train import cli, distributed
from cure_ext.train.checkpoint import model_from_checkpoint, read_checkpoint, read_last
from cure_ext.train.config import TrainConfig
from cure_ext.train.data import batches, load_dataset, split_data, train_batch_count
from cure_ext.train.distributed import agreed, from_main, state_digest
from cure_ext.train.errors import ConfigError
from cure_ext.train.evaluate import evaluate
from cure_ext.train.steps import StepSetup, cure_step
from train_runs import read_json, read_metrics, without_times

# 301 training examples in batches of 64: the last batch (45) splits unevenly, 23 + 22; 90 test examples in
# evaluation batches of 32: rank 0 attacks batches 1 and 3, rank 1 batch 2.
SHAPE = ["--train-limit", "301", "--test-limit", "90", "--eval-limit", "40", "--batch-size", "64", "--eval-batch-size",
         "32", "--attack-steps", "2", "--eval-steps", "3", "--quiet"]
RUN = ["--pretrain-epochs", "1", "--epochs", "3", *SHAPE]


def torchrun(args, nproc=2):
    # started outside the checkout: its cure_ext/ must not shadow the installed one (python -m puts cwd first)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", *args], cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


# ---- sharding, without processes ---------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_a_batch_contiguously(world):
    for n in range(12):
        parts = [Ranks(r, world).shard(n) for r in range(world)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
        sizes = [len(range(n)[p]) for p in parts]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,world", [(23, 2), (21, 2), (20, 3), (22, 4)])
def test_rank_batches_are_the_shards_of_the_one_process_batches(n, world):
    """Same order and augmentation as one process (the generator is consumed alike on every rank); a final
    batch smaller than the number of ranks is dropped."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(n)
    cpu = torch.device("cpu")

    def run(ranks):
        gen = torch.Generator().manual_seed(5)
        return list(batches(x, y, 255.0, 5, cpu, gen, augment=True, ranks=ranks)), gen.get_state()

    whole, state = run(Ranks())
    per_rank = [run(Ranks(r, world)) for r in range(world)]
    kept = [b for b in whole if len(b[1]) >= world]
    for r, (parts, rank_state) in enumerate(per_rank):
        assert torch.equal(rank_state, state)
        assert len(parts) == len(kept) == train_batch_count(n, 5, world)
    for i, (bx, by) in enumerate(kept):
        assert torch.equal(torch.cat([p[i][0] for p, _ in per_rank]), bx)
        assert torch.equal(torch.cat([p[i][1] for p, _ in per_rank]), by)


def test_state_digest_tells_every_bit():
    a = {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(3), "groups": [{"lr": 0.1, "params": [0, 1]}]}
    assert state_digest(a) == state_digest({"n": torch.tensor(3), "w": torch.tensor([0.0, 1.0]),
                                            "groups": [{"params": [0, 1], "lr": 0.1}]})
    for changed in ({"w": torch.tensor([-0.0, 1.0])}, {"w": a["w"].double()}, {"w": a["w"][None]},
                    {"groups": [{"lr": math.nextafter(0.1, 1.0), "params": [0, 1]}]}, {"v": torch.tensor(3)}):
        assert state_digest(a) != state_digest({**a, **changed}), changed


def test_under_torchrun_a_process_takes_the_gpu_of_its_local_rank_only(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.rank_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda:0: under torchrun every process takes the GPU"):
        distributed.rank_device(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="more processes on this machine than it has GPUs"):
        distributed.rank_device(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.rank_device(torch.device("cuda")) == torch.device("cuda", 1)


def test_cure_compare_under_torchrun_says_to_use_cure_train_once(monkeypatch, capsys):
    """Every rank refuses; rank 0 alone prints it (an option error is the same on every rank)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, printed in (("0", "cure-compare: error: cure-compare runs in one process; for several processes, "
                                "run each method with cure-train under torchrun\n"), ("1", "")):
        monkeypatch.setenv("RANK", rank)
        assert cli.compare_main(["--out", "never-written"]) == 2
        assert capsys.readouterr().err == printed
    assert not os.path.exists("never-written")


# ---- one data-parallel CURE step against the one-process step ----------------------------------------------

def _cure_model_and_batch():
    """A float64 network without BN (whose batch statistics would differ per shard), 7 examples, and the
    CURE step's setup; eps = 0 makes the attack return x itself, so no attack noise depends on the shard."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x = torch.rand(7, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    return model, x, y


def _cure_steps(model, x_shards, y_shards, weights, ranks, forward, verdicts=None):
    params = list(model.parameters())
    rev = [p.detach().clone() for p in params]
    flags = [True, True, False, True]
    opt = CURESGD([{"params": params, "selective": flags}], lr=0.5, momentum=0.9, weight_decay=1e-3, percentile=0.4, alpha=0.7, revision_rate=0.5,
                  revision_params=rev, seed=3)
    rev_model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    setup = StepSetup(model, opt, params, torch.Generator().manual_seed(ranks.rank), eps=0.0, step_size=0.0,
                      steps=1, gamma=0.5, selective=flags, revision_model=rev_model,
                      forward=forward, ranks=ranks)
    for x, y, w in zip(x_shards, y_shards, weights):
        with torch.no_grad():
            for r, t in zip(rev_model.parameters(), rev):
                r.copy_(t)
        result = cure_step(setup, x, y, w)
        if verdicts is not None:
            verdicts.append(result.finite)
    return [p.detach().clone() for p in params] + rev


def _data_parallel_worker(rank, world, init_file, result_file):
    import torch.distributed as dist

    from cure_ext import cure as steps  # the step machinery the trainer's CURE step runs

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, x, y = _cure_model_and_batch()
    ranks = Ranks(rank, world)
    part = ranks.shard(len(y))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    # Two steps on the uneven 7-example batch (4 + 3), each rank's loss weighted by its share; a third whose
    # input is NaN on rank 1 only (the NaN reaches every rank through the averaged gradients); a fourth whose
    # loss alone is non-finite on rank 1 (its gradients finite, as an infinite loss can have): no rank may
    # update in either.
    x_nan = x[part].clone().fill_(float("nan")) if rank == 1 else x[part]
    real_check, checks = steps.all_finite, []

    def check(loss, *grad_lists):
        checks.append(1)
        return real_check(loss, *grad_lists) and not (rank == 1 and len(checks) == 4)

    steps.all_finite = check
    verdicts = []
    out = _cure_steps(model, [x[part], x[part], x_nan, x[part]], [y[part]] * 4, [len(y[part]) * world / len(y)] * 4,
                      ranks, ddp, verdicts)
    torch.save((out, verdicts), f"{result_file}.{rank}")
    dist.destroy_process_group()


def test_a_data_parallel_cure_step_is_the_one_process_step_on_the_whole_batch(tmp_path):
    """Update and score gradients averaged (weighted by shard size) before the selective step: two ranks
    on 4 + 3 examples end where one process ends on the 7, the masks included; a non-finite gradient on
    one rank stops the step on both."""
    result = str(tmp_path / "weights")
    mp.spawn(_data_parallel_worker, args=(2, str(tmp_path / "init"), result), nprocs=2, join=True)
    model, x, y = _cure_model_and_batch()
    expected = _cure_steps(model, [x, x], [y, y], [1.0, 1.0], Ranks(), None)
    (rank0, verdicts0), (rank1, verdicts1) = torch.load(f"{result}.0"), torch.load(f"{result}.1")
    assert verdicts0 == verdicts1 == [True, True, False, False]
    for a, b, e in zip(rank0, rank1, expected):
        assert torch.equal(a, b)  # the same update on both ranks, bit for bit
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    start, _, _ = _cure_model_and_batch()
    moved = [not torch.equal(a, p) for a, p in zip(rank0, start.parameters())]
    assert all(moved)  # the test is not vacuous: every tensor took a step


def _errors_worker(rank, world, init_file, result_file):
    import torch.distributed as dist

    from cure_ext.train.errors import DataError

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ranks, seen = Ranks(rank, world), []

    def fails_on(bad_ranks, error):
        def fn():
            if rank in bad_ranks:
                raise error
            return rank
        return fn

    for call in (lambda: agreed(ranks, fails_on({1}, DataError("no data on this node"))),
                 lambda: agreed(ranks, fails_on({0, 1, 2}, DataError("missing file"))),
                 lambda: from_main(ranks, fails_on({0}, ConfigError("bad folder"))),
                 lambda: agreed(ranks, fails_on(set(), None))):
        try:
            seen.append(("ok", call()))
        except Exception as e:
            seen.append((type(e).__name__, str(e), getattr(e, "shared", False)))
    torch.save(seen, f"{result_file}.{rank}")
    dist.destroy_process_group()


def test_an_error_on_some_ranks_stops_every_rank_and_is_reported_once(tmp_path):
    result = str(tmp_path / "seen")
    mp.spawn(_errors_worker, args=(3, str(tmp_path / "init"), result), nprocs=3, join=True)
    seen = [torch.load(f"{result}.{r}") for r in range(3)]
    # One rank without its data: it reports its own error; the others stop, naming it (rank 0 reports that).
    assert seen[1][0] == ("DataError", "no data on this node", False)
    for r in (0, 2):
        assert seen[r][0] == ("PeerError", "rank 1 of 3 failed (DataError: no data on this node)", True)
    for r in range(3):
        assert seen[r][1] == ("DataError", "missing file", True)  # the same on every rank: rank 0 reports it
        assert seen[r][2] == ("ConfigError", "bad folder", True)  # rank 0's file check, raised everywhere
        assert seen[r][3] == ("ok", r)


# ---- torchrun end to end -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distributed") / "run")
    stdout = finished(torchrun(["-m", "cure_ext.train", *RUN, "--out", out]))
    return out, stdout


@pytest.mark.slow
def test_ranks_hold_identical_weights_after_training(two_process_run):
    out, _ = two_process_run
    metrics = read_metrics(out)
    last = read_last(os.path.join(out, "last.pt"))
    assert metrics["world_size"] == last["world_size"] == 2
    for record in metrics["epochs"]:
        digests = record["rank_weights_sha256"]
        assert len(digests) == 2 and digests[0] == digests[1], record["epoch"]
    # Rank 0 saved the state that both ranks hold: model, revision model, optimizer (momentum, draws' stream).
    assert digests[0] == state_digest({k: last[k] for k in ("model", "optimizer", "revision_model")})
    assert len(last["rng"]["attack_ranks"]) == 2
    assert not torch.equal(*last["rng"]["attack_ranks"])  # each rank drew its own attack starts
    fractions = [r["update_fraction"] for r in metrics["epochs"] if r["phase"] == "train"]
    assert all(0.0 < f < 1.0 for f in fractions)  # CURE's selective step really ran


@pytest.mark.slow
def test_evaluation_counts_every_test_example_once_as_one_process_does(two_process_run):
    out, _ = two_process_run
    metrics = read_metrics(out)
    cfg = metrics["config"]
    model = model_from_checkpoint(read_checkpoint(os.path.join(out, "last.pt")), "last.pt").eval()
    data = load_dataset("digits").limited(None, 90)
    single = evaluate(model, data, cfg["eps"], torch.device("cpu"), step_size=cfg["eval_step_size"],
                      steps=cfg["eval_steps"], batch_size=32, seed=cfg["seed"])
    assert single["n_test"] == metrics["final"]["n_test"] == 90
    assert {k: v for k, v in metrics["final"].items() if k != "epoch"} == single
    # The validation split, which every rank holds out itself, is evaluated the same way: sharded, as one process.
    _, val = split_data(TrainConfig.from_dict(cfg))
    on_val = evaluate(model, val, cfg["eps"], torch.device("cpu"), step_size=cfg["eval_step_size"],
                      steps=cfg["eval_steps"], attacks=("pgd20",), batch_size=32, seed=cfg["seed"])
    assert on_val["n_test"] == cfg["val_size"] == 144
    last = metrics["epochs"][-1]
    assert (last["val_clean_acc"], last["val_pgd20_acc"]) == (on_val["clean_acc"], on_val["pgd20_acc"])


@pytest.mark.slow
def test_cure_eval_under_torchrun_matches_one_process(two_process_run, tmp_path):
    out, _ = two_process_run
    ckpt = os.path.join(out, "last.pt")
    args = [ckpt, "--limit", "70", "--batch-size", "16", "--steps", "3", "--json"]
    script = "import sys; from cure_ext.train.cli import eval_main; sys.exit(eval_main())"
    finished(torchrun(["--no-python", sys.executable, "-c", script, *args, str(tmp_path / "two.json")]))
    assert cli.eval_main(args + [str(tmp_path / "one.json")]) == 0
    assert read_json(tmp_path / "two.json") == read_json(tmp_path / "one.json")


@pytest.mark.slow
def test_rank_zero_alone_writes_and_prints(two_process_run):
    out, stdout = two_process_run
    assert sorted(os.listdir(out)) == ["accuracy.png", "best.pt", "last.pt", "log.csv", "metrics.json",
                                       "update_fraction.png"]
    assert stdout.count("last (epoch 4)") == 1 and stdout.count("outputs in") == 1


def epochs_logged(log):
    try:
        with open(log) as f:
            return max(0, len(f.read().splitlines()) - 1)
    except OSError:
        return 0


def kill_with_workers(proc):
    """SIGKILL torchrun's workers (each in a session of its own) and torchrun: a machine going down."""
    def parent(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None

    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and parent(p) == proc.pid]
    for pid in workers + [proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_a_killed_three_process_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Three ranks: the order in which a reduction sums them depends on DDP's bucket layout, which must
    therefore be the same for a resumed run as for the uninterrupted one."""
    reference, out = str(tmp_path / "reference"), str(tmp_path / "killed")
    run = ["-m", "cure_ext.train", "--pretrain-epochs", "1", "--epochs", "4", *SHAPE]
    finished(torchrun(run + ["--out", reference], nproc=3))
    proc = torchrun(run + ["--out", out], nproc=3)
    last, log = os.path.join(out, "last.pt"), os.path.join(out, "log.csv")
    deadline = time.monotonic() + 300
    while epochs_logged(log) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert epochs_logged(log) >= 2, proc.communicate()[1]  # pre-training and the first CURE epoch are saved
    delay = random.uniform(0.0, 0.3)  # into the second or third CURE epoch (each takes longer than that here)
    time.sleep(delay)
    kill_with_workers(proc)
    proc.communicate()
    position = read_last(last)["position"]
    assert position["phase"] == 1 and 1 <= position["phase_epoch"] < 4, position  # resumed inside the phase
    finished(torchrun(["-m", "cure_ext.train", "--resume", "--out", out, "--quiet"], nproc=3))
    assert without_times(read_metrics(out)) == without_times(read_metrics(reference)), delay
    for name in ("last.pt", "best.pt"):
        a, b = read_checkpoint(os.path.join(out, name)), read_checkpoint(os.path.join(reference, name))
        assert state_digest(a["model"]) == state_digest(b["model"]), (name, delay)


@pytest.mark.slow
def test_cure_eff_with_sparse_evaluation_and_skipped_steps_keeps_ranks_in_step(tmp_path):
    """CURE_Eff: a new DDP wrapper at the phase change; --eval-every 2 leaves epochs unevaluated."""
    out = str(tmp_path / "eff")
    finished(torchrun(["-m", "cure_ext.train", *SHAPE, "--method", "cure-eff", "--epochs", "4", "--eval-every", "2",
                       "--skip-nonfinite", "--out", out]))
    records = read_metrics(out)["epochs"]
    assert [r["phase"] for r in records] == ["warmup", "warmup", "train", "train"]
    assert [("pgd20_acc" in r) for r in records] == [False, True, False, True]
    assert all(r["skipped_steps"] == 0 and len(set(r["rank_weights_sha256"])) == 1 for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("options,message", [
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent"], "missing data file /nonexistent/"),
    (["--batch-size", "1"], "--batch-size 1 is smaller than the number of processes (2)"),
])
def test_an_error_every_rank_meets_is_printed_once_without_a_traceback_from_us(tmp_path, options, message):
    assert_reported_once(torchrun(["-m", "cure_ext.train", *RUN, *options, "--out", str(tmp_path / "run")]), message)
    assert not os.path.exists(tmp_path / "run" / "last.pt")


def assert_reported_once(proc, message):
    """Our one-line error, printed by rank 0 alone; the workers exited with 2 (or were stopped by torchrun as
    they left), none aborted and none printed a traceback; torchrun then fails with its own report."""
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("cure-train")]
    assert len(ours) == 1 and ours[0].startswith("cure-train: error: ") and message in ours[0], err[-3000:]
    assert "terminate called" not in err and err.count("Traceback") == 1 and "ChildFailedError" in err, err
    codes = set(re.findall(r"exitcode\s*:\s*(-?\d+)", err))
    assert "2" in codes and codes <= {"2", "-15"}, err[-3000:]


@pytest.mark.slow
def test_a_failed_write_by_rank_zero_stops_every_rank_with_one_message(tmp_path):
    """The plot's path is taken by a folder: rank 0's write fails at the end of the run; all ranks stop."""
    out = tmp_path / "run"
    os.makedirs(out / "accuracy.png")
    assert_reported_once(torchrun(["-m", "cure_ext.train", *RUN, "--out", str(out)]), "Is a directory")


@pytest.mark.slow
def test_resuming_with_another_number_of_processes_is_refused(two_process_run, tmp_path, capsys):
    out = str(tmp_path / "copy")
    shutil.copytree(two_process_run[0], out)
    before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
    assert cli.train_main(["--resume", "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was written by a run of 2 process(es); resume it with as many" in err and "Traceback" not in err
    assert {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)} == before
