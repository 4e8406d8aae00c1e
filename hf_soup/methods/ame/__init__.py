"""AME, Amortized Model Ensembling (Lee & Ngo, "On Defining Neural Averaging"): the optimizer schedule run per tensor.

* :mod:`.method` — ``method: ame``, elementwise, streamed chunk by chunk;
* :mod:`.schedule` — one seeded order / shuffle / batch / learning-rate schedule for every tensor;
* :mod:`.optim`, :mod:`.functional` — which torch optimizers, stepped as ``optimizer.step()`` would;
* :mod:`.greedy` — ``method: ame_greedy``, keep a step only if the validation score improves.
"""
