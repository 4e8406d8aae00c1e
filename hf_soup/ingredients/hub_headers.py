"""Check that Hub ingredients can be souped from their safetensors headers, before downloading weights.

``get_safetensors_metadata`` reads only each file's JSON header (a range request), so a
set of multi-GB checkpoints that differ in shapes or model type is refused in seconds.

>>> precheck_hub_alignment(["org/run-1", "org/run-2@v1"], token=None)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import numpy as np

from .. import hub_settings
from ..errors import AlignmentError
from ..io.source import TensorMeta, TensorSource
from .ref import IngredientRef, parse_ref

logger = logging.getLogger("hf_soup")


class _HeaderOnly(Exception):
    """Raised when the alignment needs tensor values, which a header does not have."""


class HeaderSource(TensorSource):
    """Keys, dtypes and shapes of a Hub checkpoint, from its safetensors headers only."""

    def __init__(self, tensors: dict[str, TensorMeta], origin: str):
        self._tensors = tensors
        self.origin = origin

    def keys(self) -> list[str]:
        return list(self._tensors)

    def meta(self, key: str) -> TensorMeta:
        return self._tensors[key]

    def read(self, key: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        raise _HeaderOnly(key)


def header_source(ref: IngredientRef, *, token: str | bool | None = None) -> tuple[HeaderSource, dict | None] | None:
    """The header view and ``config.json`` of a Hub ref; ``None`` when it has no safetensors weights."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import errors as hf

    from ..hub_token import check_token
    from .hub_pull import translated_errors

    check_token(token)
    endpoint = hub_settings.endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    with translated_errors(ref, endpoint):
        info = api.model_info(ref.name, revision=ref.revision)  # a missing repo or revision fails here, early
        try:
            metadata = api.get_safetensors_metadata(ref.name, revision=info.sha)
        except hf.NotASafetensorsRepoError:
            return None
        except (hf.HfHubHTTPError, ValueError) as error:  # e.g. an index naming shards that are not there
            logger.debug("header pre-check of %s skipped: %s", ref, error)  # the download reports it precisely
            return None
        config = None
        if "config.json" in {s.rfilename for s in info.siblings or []}:
            config_path = hf_hub_download(ref.name, "config.json", revision=info.sha, token=token,
                                          endpoint=endpoint, cache_dir=hub_settings.cache_dir())
            config = json.loads(open(config_path, encoding="utf-8").read())
    tensors = {
        key: TensorMeta(info.dtype, tuple(info.shape))
        for file in metadata.files_metadata.values()
        for key, info in file.tensors.items()
    }
    return HeaderSource(tensors, str(ref)), config


def precheck_hub_alignment(ingredients: Sequence[Any], *, token: str | bool | None = None,
                           on_missing: str = "error") -> bool:
    """Align the Hub ingredients among ``ingredients`` from headers; raise :class:`AlignmentError` early.

    Local paths and state dicts are left to the full alignment. Returns ``True`` when the
    check ran, ``False`` when it could not decide (offline, fewer than two safetensors
    repos, or tied weights that need tensor values).
    """
    from ..align import align

    refs = [parse_ref(value, index=i) for i, value in enumerate(ingredients)]
    hub_refs = [ref for ref in refs if ref.kind == "hub"]
    if len(hub_refs) < 2 or hub_settings.offline():  # no Hub import at all for local soups
        return False
    views = [(ref, header_source(ref, token=token)) for ref in hub_refs]
    views = [(ref, view) for ref, view in views if view is not None]
    if len(views) < 2:
        return False
    try:
        align([v[0] for _, v in views], [str(ref) for ref, _ in views], [v[1] for _, v in views], on_missing=on_missing)
    except _HeaderOnly:
        logger.debug("header pre-check skipped: tied weights need tensor values")
        return False
    except AlignmentError as error:
        raise AlignmentError(f"(checked from the safetensors headers, nothing downloaded) {error}",
                             error.differences) from None
    return True
