"""Old home of the extraction estimator, kept for one release: the names live in
`fsm_probe.extraction.estimator` (`FSMExtractor`, `extract`), `.checks` (`check_extraction`) and
`.files` (`save_extraction`); import them from `fsm_probe.extraction`."""

from .checks import agreement_cm, check_extraction
from .estimator import COUNTER_TARGET, DEFAULT_METHOD, METHODS, FSMExtractor, extract
from .files import EXTRACTION_FILES, save_extraction

__all__ = [
    "COUNTER_TARGET", "DEFAULT_METHOD", "EXTRACTION_FILES", "METHODS", "FSMExtractor",
    "agreement_cm", "check_extraction", "extract", "save_extraction",
]
