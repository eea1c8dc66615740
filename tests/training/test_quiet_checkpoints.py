"""Checkpoints of models with tied embeddings do not print accelerate's "Removed shared tensor" notice."""

from __future__ import annotations

import logging

import torch
from accelerate import PartialState
from accelerate.utils.other import clean_state_dict_for_safetensors

from openovis.training import checkpoint


def _notices(caplog) -> int:
    tied = torch.zeros(2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="accelerate.utils.other"):
        clean_state_dict_for_safetensors({"embed.weight": tied, "lm_head.weight": tied})
    return sum("Removed shared tensor" in r.getMessage() for r in caplog.records)


def test_the_tied_weights_notice_is_filtered_and_would_otherwise_show(caplog):
    PartialState()
    log = logging.getLogger("accelerate.utils.other")
    quiet = [f for f in log.filters if isinstance(f, checkpoint._TiedWeightsNotice)]
    assert quiet, "the filter is installed when openovis.training.checkpoint is imported"
    assert _notices(caplog) == 0
    for f in quiet:
        log.removeFilter(f)
    try:
        assert _notices(caplog) == 1  # accelerate still says it without the filter
    finally:
        for f in quiet:
            log.addFilter(f)
