"""AME's optimizer groups known without torch equal the groups the installed torch builds."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_soup.methods.ame import optim, torch_groups
from hf_soup.methods.ame.optim import ELEMENTWISE, check_optimizer

pytestmark = pytest.mark.skipif(not torch_groups.verified(), reason="the table holds other torch releases")

VALUES = {  # valid values, and values some torch check refuses
    "momentum": [0.0, 0.9, -0.1], "dampening": [0.0, 0.1], "weight_decay": [0, 0.05, -1.0], "eps": [1e-6, 0.0, -1e-8],
    "nesterov": [False, True], "maximize": [False, True], "amsgrad": [True], "centered": [True],
    "decoupled_weight_decay": [True, False], "betas": [[0.8, 0.99], (0.0, 0.5), [1.0, 0.9], [0.9, -0.1]],
    "lr_decay": [0.01, -0.5], "initial_accumulator_value": [0.1, -0.1], "rho": [0.5, 1.0, 1.5],
    "alpha": [0.9, -0.2], "momentum_decay": [0.01, -0.01], "lambd": [0.001], "t0": [10.0],
    "etas": [[0.4, 1.5], [1.2, 0.5]], "step_sizes": [[1e-5, 10]], "foreach": [False], "fused": [None],
}


def _torch_group(name: str, lr: float, kwargs: dict) -> dict:
    cls = getattr(torch.optim, ELEMENTWISE[name])
    arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    group = optim.construct_without_dynamo(cls, [torch.zeros(1)], lr=lr, **arguments).param_groups[0]
    return {k: v for k, v in group.items() if k != "params"}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_default_groups_and_rates_are_torchs(name):
    cls = getattr(torch.optim, ELEMENTWISE[name])

    assert list(torch_groups.known_group(name, 0.25, {}).items()) == list(_torch_group(name, 0.25, {}).items())
    assert sorted(torch_groups.accepted_arguments(name)) == sorted(optim.optimizer_arguments(cls))
    assert torch_groups.DEFAULT_LR[name] == optim.optimizer_arguments(cls)["lr"]


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_each_argument_gives_torchs_group_or_goes_to_torch(name):
    for key in torch_groups.accepted_arguments(name)[1:]:
        for value in VALUES[key] if key in VALUES else []:
            known = torch_groups.known_group(name, 0.5, {key: value})
            try:
                expected = _torch_group(name, 0.5, {key: value})
            except (ValueError, TypeError, RuntimeError):
                assert known is None, (key, value)
                continue
            assert known is None or list(known.items()) == list(expected.items()), (key, value)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(ELEMENTWISE)), lr=st.sampled_from([0.0, 1e-3, 1, -0.1]),
       chosen=st.dictionaries(st.sampled_from(sorted(VALUES)), st.integers(0, 3), max_size=4))
def test_a_group_known_without_torch_is_one_torch_accepts_and_builds(name, lr, chosen):
    kwargs = {key: VALUES[key][index % len(VALUES[key])] for key, index in chosen.items()}
    known = torch_groups.known_group(name, lr, kwargs)
    if known is None:
        return
    assert list(known.items()) == list(_torch_group(name, lr, kwargs).items())


def test_refused_values_and_unverified_releases_go_to_torch(monkeypatch):
    assert torch_groups.known_group("sgd", 0.1, {"nesterov": True}) is None  # torch: needs a momentum
    assert torch_groups.known_group("adam", 0.1, {"lr": 0.1}) is None
    assert torch_groups.known_group("adam", 0.1, {"fused": True}) is None
    assert torch_groups.known_group("adam", 0.1, {}, torch_version="2.99.0") is None
    with pytest.raises(ValueError, match=r"torch.optim.Adam rejects these arguments: Invalid beta parameter at index 0"):
        check_optimizer("adam", 0.1, {"betas": [1.5, 0.9]})
    with pytest.raises(ValueError, match="unknown parameter 'beta1'"):
        check_optimizer("adam", 0.1, {"beta1": 0.9})
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        check_optimizer("sgd", 0.1, {"nesterov": True})


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_check_optimizer_answers_the_same_with_and_without_the_table(name, monkeypatch):
    kwargs = {"maximize": True} if name == "rprop" else {"weight_decay": 0.01, "maximize": True}
    with_table = check_optimizer(name, 0.1, kwargs)
    monkeypatch.setattr(torch_groups, "known_group", lambda *args, **kwargs: None)

    assert list(check_optimizer(name, 0.1, kwargs).items()) == list(with_table.items())
    assert optim.default_lr(name) == (1.0 if name == "sgd" else optim.optimizer_arguments(
        getattr(torch.optim, ELEMENTWISE[name]))["lr"])


def test_a_cpu_ame_merge_does_not_import_torch(make_ingredients, tmp_path):
    folders = make_ingredients("bert", 2)
    script = ("import sys, hf_soup\n"
              f"hf_soup.soup({[str(f) for f in folders]!r}, output_dir={str(tmp_path / 'soup')!r}, method='ame',\n"
              "             optimizer='adam', lr=0.01, betas=[0.8, 0.99], device='cpu')\n"
              "print('torch' in sys.modules)\n")

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert result.stdout.strip().splitlines()[-1] == "False"
