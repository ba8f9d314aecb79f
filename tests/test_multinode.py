"""Two "machines" on this one: two separate `torchrun --nnodes 2 --node_rank R` launches (gloo, CPU),
each in its own working directory (its local disk), with a shared folder (shared storage). One run
folder for the launch, with both processes' RNG states; the global batch is split; a folder that
names different places on different machines is refused before any training."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import psutil  # an accelerate dependency
import pytest
import yaml

from conftest import TINY_MODEL
from test_cli import run_cli
from test_distributed import ENV, TORCHRUN, needs_torchrun
from test_streaming import write_shards

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_two_nodes(args: list[str], nodes: list[Path], module: str = "capalign") -> list:
    """Start `python -m MODULE ARGS` (capalign, or a stand-in from tests/) as node 0 and node 1 of one
    launch, node r in the folder nodes[r]. Output goes to files: a full pipe would stall a node mid-launch."""
    port, launches = _free_port(), []
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(TESTS), ENV.get("PYTHONPATH", "")])}
    for rank, node in enumerate(nodes):
        node.mkdir(parents=True, exist_ok=True)
        out, err = (node / "launch.out").open("w"), (node / "launch.err").open("w")
        command = [TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                   "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", module, *args]
        launches.append((subprocess.Popen(command, cwd=node, env=env, stdout=out, stderr=err), out, err))
    return launches


def _wait(launches: list, nodes: list[Path]) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each node."""
    results = []
    for (launch, out, err), node in zip(launches, nodes):
        try:
            code = launch.wait(timeout=240)
        finally:
            out.close(), err.close()
        results.append((code, (node / "launch.out").read_text(), (node / "launch.err").read_text()))
    return results


def _two_nodes(args: list[str], nodes: list[Path]) -> list[tuple[int, str, str]]:
    """Run `capalign ARGS` as a two-node launch to the end."""
    return _wait(_start_two_nodes(args, nodes), nodes)


def _kill_with_children(pid: int) -> None:
    """kill -9 the process and everything it started; one that has already exited is skipped."""
    try:
        processes = [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _ours(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if "Warning" not in line)[-6000:]


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture
def shared(tmp_path) -> Path:
    """Shared storage: the run config (dropout off, so one process and two give the same losses)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    config = {"model": {**TINY_MODEL, "dropout": 0.0},
              "train": {"batch_size": 8, "max_steps": 2, "log_every": 1, "eval_every": 100,
                        "checkpoint_every": 2, "select": "none"}}
    (folder / "nodes.yaml").write_text(yaml.safe_dump(config))
    return folder


@needs_torchrun
def test_two_nodes_write_one_run_on_shared_storage_and_resume_after_a_node_failure(workspace, shared, tmp_path, capsys):
    """Both nodes stall once the first checkpoint is sealed (tests/paced.py) and are then killed (kill -9); the checkpoint
    holds both processes' RNG states; the same command with --resume on both nodes finishes one
    loadable run."""
    data = str(workspace / "data" / "shapes")  # stands for a prepared dataset on shared storage
    run = shared / "runs" / "two-nodes"
    common = ["pretrain", "--config", str(shared / "nodes.yaml"), "--data", data, "--max-steps", "30"]
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    launches = _start_two_nodes([*common, "--out", str(run)], nodes, module="paced")
    sealed, deadline = None, time.monotonic() + 240
    while sealed is None and time.monotonic() < deadline and all(launch.poll() is None for launch, _, _ in launches):
        sealed = next((c for c in run.glob("checkpoints/*") if (c / "random_states_1.pkl").is_file()
                       and not c.name.endswith(".partial")), None)
        time.sleep(0.02)  # polls for the checkpoint; nothing is timed
    for launch, _, _ in launches:  # both machines fail at once: the workers (in sessions of their own) and torchrun
        _kill_with_children(launch.pid)
    results = _wait(launches, nodes)
    assert sealed is not None, [_ours(err) for _, _, err in results]
    assert all(code != 0 for code, _, _ in results)
    assert sorted(p.name for p in sealed.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]

    results = _wait(_start_two_nodes([*common, "--out", str(run), "--resume"], nodes), nodes)
    for code, _, err in results:
        assert code == 0, _ours(err)
    assert [p.name for p in (shared / "runs").iterdir()] == ["two-nodes"]
    assert not any((node / "runs").exists() for node in nodes)  # nothing on the machines' local disks
    assert json.loads((run / "run.json").read_text())["steps"] == 30
    # The global batch of 8 was split 4 + 4: the same losses as one process taking all 8.
    code, _, err = run_cli([*common, "--out", str(tmp_path / "one")], capsys)
    assert code == 0, err
    single, double = _losses(tmp_path / "one"), _losses(run)
    for step in (1, 2):
        assert double[step] == pytest.approx(single[step], rel=1e-4, abs=1e-5), (single, double)
    image = next((Path(__file__).resolve().parents[1] / "examples" / "images").glob("*.png"))
    code, _, err = run_cli(["caption", str(image), "--model", str(run), "--output", str(tmp_path / "caps.json")], capsys)
    assert code == 0, err
    assert isinstance(json.loads((tmp_path / "caps.json").read_text())[0]["caption"], str)


@needs_torchrun
def test_two_nodes_without_out_stream_local_shards_into_the_folder_node_0_names(shared, tmp_path):
    """Each machine streams its own local copy of the shards (each process reads its share of every
    pass); without --out the main process of node 0 names the run folder as an absolute path, so node
    1 writes there too, not into a runs/ of its own working directory."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        write_shards(node / "shards", shards=2, per_shard=4)
    results = _two_nodes(["pretrain", "--config", str(shared / "nodes.yaml"), "--data", "shards/{000..001}.tar",
                          "--batch-size", "4", "--shuffle-buffer", "2"], nodes)
    for code, _, err in results:
        assert code == 0, _ours(err)
    runs = list((nodes[0] / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("pretrain-"), runs
    assert not (nodes[1] / "runs").exists()
    assert (runs[0] / "run.json").is_file()
    assert sorted(_losses(runs[0])) == [1, 2]


@needs_torchrun
def test_an_out_that_names_different_folders_on_the_nodes_is_refused_in_one_line(workspace, shared, tmp_path):
    """A relative --out from different working directories (as a folder on each machine's local
    disk would) names two folders: every process stops with one line before training."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    results = _two_nodes(["pretrain", "--config", str(shared / "nodes.yaml"), "--data",
                          str(workspace / "data" / "shapes"), "--out", "runs/split"], nodes)
    for code, _, err in results:
        assert code != 0
        ours = [line for line in err.splitlines() if line.startswith("capalign: error:")]
        assert len(ours) == 1 and "does not see the run folder" in ours[0] and "--out" in ours[0], _ours(err)
        frames = [line for line in err.splitlines() if line.strip().startswith('File "')]
        assert not any("capalign" in frame for frame in frames), _ours(err)  # torchrun's own traceback only
    assert not any((node / "runs" / "split" / "run.json").exists() for node in nodes)
    assert not any((node / "runs" / "split" / "metrics.jsonl").exists() for node in nodes)
