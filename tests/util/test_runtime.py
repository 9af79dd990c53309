"""The runtime (lib.runtime): device choice, autocast, seeding, quiet progress, and the AdamW parameter groups."""

import numpy as np
import pytest

from lib import runtime


def test_pick_device():
    import torch

    assert runtime.pick_device("cpu") == "cpu"
    assert runtime.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device='tpu'"):
        runtime.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            runtime.pick_device("cuda")


def test_autocast_is_a_no_op_on_cpu():
    import torch

    a = torch.ones(4, 4)
    with runtime.autocast(torch.device("cpu")):  # float32 stays float32 (bfloat16 is for CUDA only)
        assert not torch.is_autocast_enabled("cpu") and (a @ a).dtype == torch.float32


def test_seed_everything_repeats_numpy_and_torch():
    import torch

    a = (runtime.seed_everything(5).random(3), np.random.random(2), torch.rand(2))
    b = (runtime.seed_everything(5).random(3), np.random.random(2), torch.rand(2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert torch.equal(a[2], b[2])


def test_quiet_follows_environment(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("LIB_QUIET", "0")
    assert not runtime.quiet()
    monkeypatch.setenv("CI", "true")
    assert runtime.quiet() and runtime.progress(range(3)).disable


def test_adamw_for_decays_matrices_only_and_named_exceptions():
    import torch

    from lib.runtime import adamw_for

    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Embedding(5, 4))
    m[1].weight.requires_grad_(False)
    opt = adamw_for(m, 1e-3, 0.1, no_decay=("2.",))
    decay, flat = (g["params"] for g in opt.param_groups)
    assert [p.shape for p in decay] == [(4, 3)] and opt.param_groups[0]["weight_decay"] == 0.1
    assert {tuple(p.shape) for p in flat} == {(4,), (5, 4)} and len(
        flat
    ) == 3  # biases + embedding, frozen left out
