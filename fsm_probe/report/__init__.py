"""Stage 7: the offline HTML report."""

from .document import ReportSettings, report_html, write_report

__all__ = ["ReportSettings", "report_html", "write_report"]
