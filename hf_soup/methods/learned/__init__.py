"""Learned soups (MEHL-Soup / MEHL-Soup+, Li et al.): mixing coefficients trained on data.

Submodules, one concept each (all import torch lazily, only when used):

* :mod:`.blocks` — which parameters share a coefficient (one block, per tensor, per pattern);
* :mod:`.coefficients` — hyperplane (extrapolating) and softmax (simplex) parameterisations;
* :mod:`.schedule` — the seeded schedule of model mini-batches and the learning-rate schedule;
* :mod:`.bcd` — block-coordinate descent with one graph on the combined model (Algorithm 1);
* :mod:`.full_graph` — the all-models Learned-Soup reference (one graph over all K models);
* :mod:`.keymap` — map blocks of in-memory parameters onto checkpoint keys for the merge plan;
* :mod:`.task` — the evaluator's task model, data and loss as the optimisers see them;
* :mod:`.plot` — the coefficient-distribution figure of the model card (paper Fig. 1);
* :mod:`.memory` — in-process peak-memory measurement (tests and benchmark).

The recipe-facing method is :class:`hf_soup.methods.learned.LearnedSoup` (``method: learned``).
"""
