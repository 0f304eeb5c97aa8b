"""Device selection (``device:`` / ``--device``) and the engine's host-device synchronizations."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import yaml

from steepest.config import ConfigError, load_config
from steepest.devices import DeviceError, check_device_name, resolve_device
from steepest.engine import train

CFG = {
    "name": "dev",
    "data": {"name": "digits", "classes": [0, 1], "n_train": 60, "n_test": 40},
    "model": {"name": "mlp", "widths": [8], "init_scale": 0.5},
    "seeds": [0, 1],
    "algorithms": [
        {"algorithm": "ngd", "schedule": "power", "lr": 0.1, "a": 0.5},
        {"algorithm": "sign", "schedule": "power", "lr": 0.01, "a": 0.5},
        {"algorithm": "gd", "schedule": "loss_based", "lr": 0.1},
    ],
    "stop": {"steps": 60},
}
NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_valid_device_spellings(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", "", "cpu:0"])
def test_misspelled_device_is_refused_in_config(name):
    with pytest.raises(ConfigError, match="device: .*device must be auto, cpu, cuda or cuda:N"):
        load_config({**CFG, "device": name})


def test_auto_and_cpu_resolve_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_error():
    with pytest.raises(DeviceError, match="CUDA is not available on this machine"):
        resolve_device("cuda:0")


def test_device_is_not_part_of_the_config_hash():
    """A batch interrupted on one machine can be resumed on another: the device is not the math."""
    hashes = {
        load_config({**CFG, "device": d}).config_hash() for d in ("auto", "cpu", "cuda", "cuda:1")
    }
    assert len(hashes) == 1
    assert (
        load_config({**CFG, "seeds": [0]}).config_hash() not in hashes
    )  # the hash still sees the math


def test_device_cpu_trains_exactly_as_the_default(tmp_path):
    """``device: cpu`` (and ``--device cpu``) is today's engine, bit for bit."""
    a = train(CFG, db=tmp_path / "a.db", progress=False)
    b = train({**CFG, "device": "cpu"}, db=tmp_path / "b.db", progress=False)
    c = train(CFG, db=tmp_path / "c.db", progress=False, device="cpu")
    for fa, fb, fc in zip(a.final, b.final, c.final, strict=True):
        for k in fa:
            if k == "wall_time":
                continue
            same = fa[k] == fb[k] == fc[k] or all(math.isnan(x) for x in (fa[k], fb[k], fc[k]))
            assert same, (k, fa[k], fb[k], fc[k])


def test_checkpoints_hold_cpu_tensors(tmp_path):
    res = train(CFG, db=tmp_path / "r.db", progress=False)
    sd = torch.load(res.checkpoint, weights_only=True, map_location="cpu")
    tensors = [*sd["params"], sd["t"], sd["frame"], sd["log_flow"]]
    assert all(t.device.type == "cpu" for t in tensors)


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
def test_cli_device_cuda_without_cuda_writes_nothing(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    db = tmp_path / "sub" / "runs.db"
    for argv in (
        ["train", str(cfg), "--db", str(db), "--device", "cuda"],
        [
            "reproduce",
            "linear",
            "--size",
            "smoke",
            "--out",
            str(tmp_path / "rep"),
            "--device",
            "cuda:0",
        ],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "steepest.cli", *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and "CUDA is not available" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert not db.exists() and not db.parent.exists()
    assert not (tmp_path / "rep").exists()


# ---------------------------------------------------------------------- host syncs per step

#: Tensor methods that copy a device value to the host (each is a host-device synchronization
#: on CUDA). ``torch.nonzero`` also syncs (its output shape depends on the values).
_SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


class _SyncCounter:
    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in _SYNC_METHODS:
            orig = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, orig))
        orig_nz = torch.nonzero
        monkeypatch.setattr(torch, "nonzero", self._wrap("nonzero", orig_nz))

    def _wrap(self, name, orig):
        def counted(*args, **kwargs):
            self.calls.append(name)
            return orig(*args, **kwargs)

        return counted


def _runner(tmp_path, cfg):
    """A runner set up as ``train`` does it, with logging and checkpoints stubbed out."""
    from steepest.data import load_dataset
    from steepest.engine import BatchRunner, Engine
    from steepest.store import RunStore

    c = load_config(cfg)
    d = c.data
    ds = load_dataset(
        d.name,
        n_train=d.n_train,
        n_test=d.n_test,
        classes=d.classes,
        seed=d.seed,
        dtype=torch.float64,
    )
    eng = Engine(c, c.run_specs(), ds, "cpu")
    store = RunStore(tmp_path / "s.db")
    ids = [
        store.create_run(name=f"r{i}", algorithm=s.algorithm, seed=s.seed, config={})
        for i, s in enumerate(c.run_specs())
    ]
    r = BatchRunner(eng, store, ids, tmp_path / "ck", progress=False)
    r.fresh_state(eng.init_params())
    r.log = lambda which, *a, **k: None  # type: ignore[method-assign]
    r.checkpoint = lambda *a, **k: None  # type: ignore[method-assign]
    r.start(resumed=False)  # the first evaluation (log and checkpoint do nothing)
    return r


@pytest.mark.parametrize(
    "algos",
    [
        CFG["algorithms"],
        [
            {"algorithm": "adam", "schedule": "power", "lr": 0.01, "a": 0.5},
            {"algorithm": "muon", "schedule": "power", "lr": 0.01, "a": 0.5},
            {"algorithm": "cd", "schedule": "power", "lr": 0.5, "a": 0.3},
        ],
    ],
    ids=["ngd-sign-lossbased-gd", "adam-muon-cd"],
)
def test_a_step_makes_no_host_transfer_and_its_settling_one(tmp_path, monkeypatch, algos):
    """Queuing a step (``BatchRunner.advance``) makes no host transfer at all; settling it reads
    its packed event flags once (on a GPU from a non-blocking copy, after the next step is
    queued); a metric event adds one more (the stacked columns, see ``BatchRunner.log``). Counted
    on the CPU by wrapping every Tensor method that copies to the host."""
    r = _runner(tmp_path, {**CFG, "algorithms": algos, "stop": {"steps": 400}})
    for _ in range(5):  # past step 1's milestone and the first-separation event
        r.step()
    counter = _SyncCounter(monkeypatch)
    advance, settle = [], []
    for _ in range(40):
        n0 = len(counter.calls)
        pending = r.advance()
        n1 = len(counter.calls)
        r.settle(pending)
        advance.append(counter.calls[n0:n1])
        settle.append(counter.calls[n1:])
    monkeypatch.undo()
    assert advance, "no step ran"
    assert all(calls == [] for calls in advance), (
        advance
    )  # queuing a step never waits for the device
    assert all(calls == ["tolist"] for calls in settle), (
        settle
    )  # reading its flags: one host-side list


def test_a_metrics_event_moves_its_numbers_in_one_transfer(tmp_path, monkeypatch):
    from steepest.engine import BatchRunner

    r = _runner(tmp_path, {**CFG, "stop": {"steps": 50}})
    for _ in range(3):
        r.step()
    counter = _SyncCounter(monkeypatch)
    BatchRunner.log(r, [True] * r.e.K, True)
    calls = list(counter.calls)
    monkeypatch.undo()
    rows = r.store.metrics(r.run_ids[0])
    assert len(rows["step"]) == 1 and rows["step"][0] == 3  # the event was stored ...
    assert calls == ["tolist"], calls  # ... from one device-to-host transfer


def test_batches_trained_concurrently_equal_batches_trained_in_turn(tmp_path):
    """The GPU path of the reproductions (one process per batch, one shared SQLite store)
    stores the same numbers as training the batches one after another."""
    from steepest.reproduce.common import batch_configs, load_spec, train_batches
    from steepest.store import RunStore

    cfgs = batch_configs(load_spec("flavors-f1"), "smoke")
    seq = train_batches(cfgs, tmp_path / "seq.db", device="cpu", parallel=False)
    par = train_batches(cfgs, tmp_path / "par.db", device="cpu", parallel=True)
    assert list(par) == list(cfgs)
    with RunStore(tmp_path / "seq.db") as a, RunStore(tmp_path / "par.db") as b:
        assert len(b.list_runs()) == len(a.list_runs()) == sum(len(r.run_ids) for r in seq.values())
        for name in cfgs:
            for ra, rb in zip(seq[name].run_ids, par[name].run_ids, strict=True):
                ma, mb = a.metrics(ra), b.metrics(rb)
                assert list(ma["step"]) == list(mb["step"])
                for col in ("log_loss", "margin_l1", "margin_l2", "margin_linf"):
                    assert (ma[col] == mb[col]).all(), (name, col)


def _pipelined(monkeypatch, on: bool = True):
    """Force the GPU schedule (step t+1 queued before step t is settled) on the CPU."""
    from steepest import engine as eng

    orig = eng.BatchRunner.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        self.pipelined = on

    monkeypatch.setattr(eng.BatchRunner, "__init__", init)


@pytest.mark.parametrize("variant", ["full-batch", "minibatch", "loss-target", "flow"])
def test_the_pipelined_schedule_stores_exactly_what_the_plain_one_does(
    tmp_path, monkeypatch, variant
):
    """The GPU loop settles step t while step t+1 is queued; every stored row, status and the
    final checkpoint must equal the plain loop's, including runs that end at different steps."""
    # Stateful rules (moments that a snapshot must hold as of its own step) beside stateless ones.
    stateful = [
        {"algorithm": "adam", "schedule": "power", "lr": 0.01, "a": 0.5},
        {"algorithm": "momentum", "schedule": "power", "lr": 0.05, "a": 0.5},
    ]
    cfg = {**CFG, "algorithms": CFG["algorithms"] + stateful, "stop": {"steps": 150}}
    if variant == "minibatch":
        cfg = {**cfg, "batch_size": 25, "algorithms": CFG["algorithms"][:2] + stateful}
    if variant == "loss-target":
        cfg = {**cfg, "stop": {"steps": 400, "log_loss": -30.0}}
    if variant == "flow":  # rollbacks and the cached next directions must survive the pipeline
        flow = [{"algorithm": a, "schedule": "flow"} for a in ("ngd", "sign", "cd", "adam")]
        cfg = {**cfg, "algorithms": flow}
    plain = train(cfg, db=tmp_path / "a.db", progress=False)
    if variant == "loss-target":  # the runs must end at different steps for this to test anything
        assert len({f["step"] for f in plain.final}) > 1, [f["step"] for f in plain.final]
    _pipelined(monkeypatch)
    piped = train(cfg, db=tmp_path / "b.db", progress=False)
    from steepest.store import RunStore

    with (
        RunStore(tmp_path / "a.db", create=False) as a,
        RunStore(tmp_path / "b.db", create=False) as b,
    ):
        for ra, rb in zip(plain.run_ids, piped.run_ids, strict=True):
            ma, mb = a.metrics(ra), b.metrics(rb)
            assert set(ma) == set(mb) and ma["step"].tolist() == mb["step"].tolist()
            for k in ma:
                if k != "wall_time":
                    assert ((ma[k] == mb[k]) | (ma[k] != ma[k]) & (mb[k] != mb[k])).all(), k
    assert plain.statuses == piped.statuses
    sa = torch.load(plain.checkpoint, weights_only=True)
    sb = torch.load(piped.checkpoint, weights_only=True)
    for k in ("t", "iteration", "log_alpha", "rollbacks", "done", "log_flow"):
        assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    for pa, pb in zip(sa["params"], sb["params"], strict=True):
        assert torch.equal(pa, pb)
    flat_a, flat_b = [], []
    from steepest.stacked import tree_map

    tree_map(lambda x: flat_a.append(x), sa["algo_states"])
    tree_map(lambda x: flat_b.append(x), sb["algo_states"])
    assert len(flat_a) == len(flat_b) > 0 and all(
        torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True)
    )


def test_a_signal_in_the_pipelined_loop_checkpoints_the_settled_step_and_resumes_exactly(
    tmp_path, monkeypatch
):
    import signal as sig

    from steepest import engine as eng
    from steepest.store import RunStore

    cfg = {
        **CFG,
        "algorithms": CFG["algorithms"]
        + [{"algorithm": "adam", "schedule": "power", "lr": 0.01, "a": 0.5}],
        "stop": {"steps": 150},
    }
    ref = train(cfg, db=tmp_path / "ref.db", progress=False)
    _pipelined(monkeypatch)
    orig = eng.BatchRunner.settle

    def settle(self, p):
        orig(self, p)
        if self.t_host_max == 57:  # as if SIGTERM arrived while step 58 was queued
            self.stop.signum = sig.SIGTERM

    monkeypatch.setattr(eng.BatchRunner, "settle", settle)
    db = tmp_path / "b.db"
    with pytest.raises(eng.Interrupted):
        train(cfg, db=db, progress=False)
    monkeypatch.setattr(eng.BatchRunner, "settle", orig)
    with RunStore(db, create=False) as store:
        assert {r.status for r in store.list_runs()} == {"interrupted"}
    res = train(cfg, db=db, resume=True, progress=False)
    with RunStore(tmp_path / "ref.db", create=False) as a, RunStore(db, create=False) as b:
        for ra, rb in zip(ref.run_ids, res.run_ids, strict=True):
            ma, mb = a.metrics(ra), b.metrics(rb)
            assert ma["step"].tolist() == mb["step"].tolist()
            for k in ma:
                if k != "wall_time":
                    assert ((ma[k] == mb[k]) | (ma[k] != ma[k]) & (mb[k] != mb[k])).all(), k
