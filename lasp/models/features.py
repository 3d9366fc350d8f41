"""A checkpoint's feature-extractor config: whether its ``input_values`` are normalized per utterance.

Every stage, the mask search and the exports read and write ``preprocessor_config.json`` through here, so the
audio a model was trained on is fed to it the same way everywhere (:mod:`lasp.data.collate` pads and normalizes).
"""
from __future__ import annotations

import logging
import os

from transformers import Wav2Vec2FeatureExtractor

from lasp.data.collate import wants_attention_mask
from lasp.errors import ConfigError
from lasp.io import read_json_object
from lasp.models.layout import model_dir

log = logging.getLogger(__name__)

FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"
# Presets (random weights, no feature-extractor config) normalize like XLSR-53 / wav2vec 2.0 large, whose
# preprocessor_config.json says do_normalize: true; so does transformers' Wav2Vec2FeatureExtractor default.
PRESET_NORMALIZE = True


def feature_normalization(name_or_path: str) -> bool:
    """Whether ``input_values`` are normalized per utterance for this model (``do_normalize``).

    A checkpoint directory's ``preprocessor_config.json`` decides; a preset, or a directory without that file,
    uses :data:`PRESET_NORMALIZE` (and says so in the log, since a real checkpoint should carry its config).
    """
    if os.path.isdir(str(name_or_path)):  # a lasp system directory keeps its checkpoint in shared/
        name_or_path = model_dir(name_or_path)
    path = os.path.join(str(name_or_path), FEATURE_EXTRACTOR_FILE)
    if os.path.isfile(path):
        value = read_json_object(path, "feature-extractor config", ConfigError).get("do_normalize", True)
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: do_normalize must be true or false, got {value!r}")
        return value
    if os.path.isdir(str(name_or_path)):
        log.warning("%s has no %s: normalizing audio per utterance (do_normalize=%s, the wav2vec 2.0 default)",
                    name_or_path, FEATURE_EXTRACTOR_FILE, PRESET_NORMALIZE)
    return PRESET_NORMALIZE


def save_feature_extractor(directory: str, config, normalize: bool) -> None:
    """Write the ``preprocessor_config.json`` a model directory's inputs were made with (read back above)."""
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=normalize,
                             return_attention_mask=wants_attention_mask(config)).save_pretrained(directory)
