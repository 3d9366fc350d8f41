"""transformers' weight-loading report, reduced to one line when the difference is the expected head switch.

Every pretrain -> finetune hand-over loads a pre-training checkpoint into ``Wav2Vec2ForCTC``: the
pre-training head (``project_hid``, ``project_q``, ``quantizer``) is left out and a fresh CTC head
(``lm_head``) is initialised, exactly as every wav2vec 2.0 fine-tuning recipe does. transformers prints
a 17-line table with terminal colour codes for it. :func:`from_pretrained` holds that table back and
prints one line instead; any other difference (a missing encoder weight, a size mismatch, an error) still
gets transformers' full report.
"""
from __future__ import annotations

import logging

# heads that one wav2vec2 class has and another lacks; nothing else may differ silently
_PRETRAINING_HEAD = ("project_hid.", "project_q.", "quantizer.")
_CTC_HEAD = ("lm_head.",)
_LOGGER = "transformers.modeling_utils"  # where transformers logs the report


class _HoldReport(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.held.append(record)
            return False
        return True


def expected_head_switch(info: dict) -> bool:
    """Only heads differ: nothing but a CTC head is missing, nothing but head tensors is left over."""
    missing, unexpected = info.get("missing_keys") or (), info.get("unexpected_keys") or ()
    return (not info.get("mismatched_keys") and not info.get("error_msgs")
            and all(k.startswith(_CTC_HEAD) for k in missing)
            and all(k.startswith(_PRETRAINING_HEAD + _CTC_HEAD) for k in unexpected))


def summary_line(path: str, info: dict) -> str:
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    parts = []
    if unexpected:
        heads = ", ".join(sorted({k.split(".")[0] for k in unexpected}))
        parts.append(f"{len(unexpected)} head tensors not used ({heads})")
    if missing:
        parts.append(f"new CTC head initialised ({', '.join(missing)})")
    return f"loaded {path}: " + "; ".join(parts) if parts else f"loaded {path}"


def from_pretrained(cls, path: str, **kwargs):
    """``cls.from_pretrained(path, **kwargs)`` with the load report reduced to one line for a head switch."""
    logger = logging.getLogger(_LOGGER)
    hold = _HoldReport()
    logger.addFilter(hold)
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except BaseException:
        _release(logger, hold)
        raise
    logger.removeFilter(hold)
    if hold.held and not expected_head_switch(info):
        _release(logger, hold)
    elif hold.held:
        print(summary_line(path, info))
    return model


def _release(logger: logging.Logger, hold: _HoldReport) -> None:
    """Hand the held report to the logger's handlers after all (something unexpected happened)."""
    logger.removeFilter(hold)
    for record in hold.held:
        logger.handle(record)
    hold.held.clear()
