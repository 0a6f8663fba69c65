"""tunekit.report: the evaluation report (markdown, self-contained HTML, charts) from an eval result."""

from tunekit.report.writer import write_report

__all__ = ["write_report"]
