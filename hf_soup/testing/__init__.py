"""Test helpers shipped with hf_soup: a local Hugging Face Hub for tests and the offline demo.

>>> from hf_soup.testing import LocalHub
>>> with LocalHub("/tmp/hub") as hub:  # doctest: +SKIP
...     hub.publish("./my-model", "org/my-model")

Needs ``olah`` (``pip install 'hf-soup[test]'``) and ``git``. Also here, for tests and
benchmarks: :mod:`.learned_reference` (the all-models learned soup the ``learned`` method is
checked against), :mod:`.memory` (in-process peak-memory measurement) and :mod:`.train`
(seeded fine-tuning steps for tiny models).
"""

from .hub_server import DEFAULT_TOKEN, LocalHub

__all__ = ["DEFAULT_TOKEN", "LocalHub"]
