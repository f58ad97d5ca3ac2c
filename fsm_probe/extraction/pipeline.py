"""Old home of the extraction estimator, kept for one release: the names live in
`fsm_probe.extraction.estimator` (`FSMExtractor`, `extract`), `.checks` (`check_extraction`) and
`.files` (`save_extraction`); import them from `fsm_probe.extraction`. The search constants
(`UNIQUE_MAX`, `GROWTH`, ...) are read here, but set them in `fsm_probe.extraction.search`."""

from .checks import agreement_cm, check_extraction
from .estimator import COUNTER_TARGET, DEFAULT_METHOD, METHODS, FSMExtractor, extract
from .files import EXTRACTION_FILES, save_extraction
from .search import (
    CLUSTER_SIZES,
    GRID_SIZES,
    GROWTH,
    IMPROVEMENT,
    PATIENCE,
    RETRY_FIT_ROWS,
    RETRY_SIZES,
    UNIQUE_MAX,
)

__all__ = [
    "CLUSTER_SIZES", "COUNTER_TARGET", "DEFAULT_METHOD", "EXTRACTION_FILES", "GRID_SIZES", "GROWTH",
    "IMPROVEMENT", "METHODS", "PATIENCE", "RETRY_FIT_ROWS", "RETRY_SIZES", "UNIQUE_MAX", "FSMExtractor",
    "agreement_cm", "check_extraction", "extract", "save_extraction",
]
