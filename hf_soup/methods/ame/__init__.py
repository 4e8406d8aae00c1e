"""AME, Amortized Model Ensembling (Lee & Ngo, "On Defining Neural Averaging"): the optimizer schedule run per tensor.

* :mod:`.method` — ``method: ame``, elementwise, streamed chunk by chunk;
* :mod:`.schedule` — one seeded order / shuffle / batch / learning-rate schedule for every tensor;
* :mod:`.optim` — which torch optimizers, and their arguments checked by torch;
* :mod:`.portable`, :mod:`.elementary` — the default steps: correctly rounded float64
  operations, the same bytes with numpy on the host and torch on a GPU;
* :mod:`.functional` — ``fused: true``: torch's own kernels, stepped as ``optimizer.step()`` would;
* :mod:`.greedy` — ``method: ame_greedy``, keep a step only if the validation score improves.
"""
