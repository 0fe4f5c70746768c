"""The comparison report of one or more runs.

runs      what a run directory holds (config, source stats, eval results), missing pieces tolerated
markdown  the tables
plot      the figure
write     `write_report`: both files
"""

from s3ft.errors import ReportError
from s3ft.report.write import write_report

__all__ = ["ReportError", "write_report"]
