"""The training harness on a toy trainer: a resumed run equals an uninterrupted one, early stopping, and the
checks of its state file. Each real trainer's own resume test is with its module's tests (tests/models/:
test_mlp, test_contrastive, test_dino, test_gan, test_pretrained, test_shape_judge)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib import trainer


def toy(state_dir=None, stop_after=None, total=12, patience_at=None, checkpoint=False):
    """A linear model fitted by SGD on batches drawn by a NumPy generator, with dropout drawing from torch's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(2)
    x = torch.as_tensor(np.random.default_rng(3).standard_normal((64, 4)), dtype=torch.float32)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    objects = {"model": model, "opt": opt, "rngs": trainer.Group(rng=rng, gen=gen, torch=trainer.TorchRNG())}
    run = trainer.Run(state_dir, "toy", "test.toy/1", "k1", total, "toy", objects)
    run.start({"loss": []}, best=np.inf)
    for _ in run.steps(stop_after):
        idx = torch.as_tensor(rng.choice(64, 8, replace=False))
        noise = 0.01 * torch.randn(8, 1, generator=gen)
        loss = ((model(x[idx]) - y[idx] - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.history["loss"].append(float(loss.detach()))
        run.advance(loss=f"{float(loss.detach()):.3f}")
        run.done = patience_at is not None and run.step >= patience_at
        save = run.checkpoint if checkpoint else run.save
        save(best=min(run.extra["best"], float(loss.detach())), done=run.done)
    return model, run


def test_resume_equals_uninterrupted(tmp_path):
    whole, r1 = toy()
    toy(tmp_path, stop_after=5)
    resumed, r2 = toy(tmp_path)
    assert r2.resumed and r2.step == r1.step == 12
    assert r1.history["loss"] == r2.history["loss"] and r2.extra["best"] == min(r1.history["loss"])
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert len(list(tmp_path.iterdir())) == 1  # the state file only, no temporary left behind


def test_saved_progress_reads_the_step_and_the_end_from_outside_the_run(tmp_path):
    toy(tmp_path / "half", stop_after=5)
    toy(tmp_path / "stopped", patience_at=4)
    (half,), (stopped,) = (list((tmp_path / d).iterdir()) for d in ("half", "stopped"))
    assert trainer.saved_progress(half) == (5, False)
    assert trainer.saved_progress(stopped) == (4, True)
    (tmp_path / "torn.pt").write_bytes(half.read_bytes()[:100])  # what a reader may see mid-replace
    assert (
        trainer.saved_progress(tmp_path / "torn.pt")
        == trainer.saved_progress(tmp_path / "gone.pt")
        == (0, False)
    )


def test_checkpoints_are_spaced_in_time_but_the_last_step_always_saves(tmp_path, monkeypatch):
    saves = []
    write = trainer.Run.save
    monkeypatch.setattr(trainer.Run, "save", lambda self, **kw: saves.append(self.step) or write(self, **kw))
    monkeypatch.setenv("LIB_SAVE_SECONDS", "1000")
    whole, r1 = toy()
    saves.clear()
    toy(tmp_path, stop_after=5, checkpoint=True)
    assert saves == [5]  # the end of the call, not every step
    resumed, r2 = toy(tmp_path, checkpoint=True)
    assert saves == [5, 12] and r2.resumed and r2.history["loss"] == r1.history["loss"]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    monkeypatch.setenv("LIB_SAVE_SECONDS", "0")
    saves.clear()
    toy(tmp_path / "every", stop_after=3, checkpoint=True)
    assert saves == [1, 2, 3]
    monkeypatch.setenv("LIB_SAVE_SECONDS", "soon")
    with pytest.raises(ValueError, match=r"\$LIB_SAVE_SECONDS='soon': expected a number of seconds >= 0"):
        toy(tmp_path / "bad", stop_after=1, checkpoint=True)


def test_a_finished_or_stopped_run_does_not_train_again(tmp_path):
    _, r = toy(tmp_path, patience_at=4)
    assert r.step == 4 and r.done
    _, again = toy(tmp_path, patience_at=4)
    assert again.resumed and again.done and again.step == 4 and len(again.history["loss"]) == 4


def test_state_files_of_another_format_or_key_are_refused(tmp_path):
    toy(tmp_path, stop_after=1)
    path = next(tmp_path.iterdir())
    with pytest.raises(ValueError, match="not a other/1 training state"):
        trainer.Run(tmp_path, "toy", "other/1", "k1", 3, "toy", {})
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable training state"):
        trainer.Run(tmp_path, "toy", "test.toy/1", "k1", 3, "toy", {})


def test_a_step_without_advance_is_an_error():
    run = trainer.Run(None, "toy", "f", "k", 3, "toy", {})
    run.start({})
    with pytest.raises(RuntimeError, match="without Run.advance"):
        for _ in run.steps():
            pass


def test_generator_states_round_trip():
    rng, gen = np.random.default_rng(5), torch.Generator().manual_seed(5)
    group = trainer.Group(rng=rng, gen=gen, cuda=trainer.CudaRNG("cpu"))
    saved = group.state_dict()
    assert saved["cuda"] is None  # no CUDA state on a CPU device
    a, b = rng.random(3), torch.rand(3, generator=gen)
    group.load_state_dict(saved)
    np.testing.assert_array_equal(rng.random(3), a)
    assert torch.equal(torch.rand(3, generator=gen), b)
