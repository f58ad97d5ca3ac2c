"""Stage 7: the offline HTML report."""

from .context import analysis_length
from .document import SECTIONS, ReportSettings, report_html, write_report
from .sections import CIRCUIT_THRESHOLD, CIRCUIT_TOP_K

__all__ = [
    "CIRCUIT_THRESHOLD", "CIRCUIT_TOP_K", "SECTIONS", "ReportSettings", "analysis_length", "report_html",
    "write_report",
]
