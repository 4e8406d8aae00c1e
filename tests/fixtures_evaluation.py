"""Fixtures of the evaluation tests: the weights of every model the evaluator scored."""

from __future__ import annotations

import pytest


def snapshot(model) -> dict:
    """A detached copy of ``model``'s state dict."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.fixture
def scored(monkeypatch):
    """Every scored model's weights, by the pass's description."""
    from hf_soup.evaluation.evaluator import Evaluator

    states: dict[str, dict] = {}
    original = Evaluator._score_model

    def record(self, model, description):
        states[description] = snapshot(model)
        return original(self, model, description)

    monkeypatch.setattr(Evaluator, "_score_model", record)
    return states
