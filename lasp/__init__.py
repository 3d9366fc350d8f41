"""lasp: language-adaptive sparse sub-networks for cross-lingual speech models."""
__version__ = "0.1.0"

from lasp.confine import ConfinedOptimizer  # noqa: E402
from lasp.masked import MaskedModel  # noqa: E402
from lasp.masks import LanguageMasks  # noqa: E402
from lasp.models import load_model, preset_config  # noqa: E402
from lasp.pruning import make_language_masks, prune  # noqa: E402
from lasp.scoring import score_language  # noqa: E402

__all__ = [
    "ConfinedOptimizer", "LanguageMasks", "MaskedModel", "load_model", "make_language_masks", "preset_config",
    "prune", "score_language", "__version__",
]
