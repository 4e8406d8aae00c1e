"""Learned soups (MEHL-Soup / MEHL-Soup+, Li et al.): mixing coefficients trained on data.

Submodules, one concept each (all import torch lazily, only when used):

* :mod:`.blocks` — which parameters share a coefficient (one block, per tensor, per pattern);
* :mod:`.coefficients` — hyperplane (extrapolating) and softmax (simplex) parameterisations;
* :mod:`.schedule` — the seeded schedule of model mini-batches and the learning-rate schedule;
* :mod:`.bcd` — block-coordinate descent with one graph on the combined model (Algorithm 1);
* :mod:`.keymap` — map blocks of in-memory parameters onto checkpoint keys for the merge plan;
* :mod:`.task` — the evaluator's task model, data and loss as the optimisers see them;
* :mod:`.plot` — the coefficient-distribution figure of the model card (paper Fig. 1);
* :mod:`.method` — ``method: learned``, the recipe-facing :class:`~.method.LearnedSoup`.

The all-models reference (one graph over all K models) and the peak-memory probe used by
the tests and the benchmark are in :mod:`hf_soup.testing` (``learned_reference``, ``memory``).
"""
