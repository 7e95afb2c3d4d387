"""The end-to-end analysis of one model on one process, written as one ``report.html`` and a
``metrics.json`` holding every figure shown.

- :mod:`~belief_lens.report.document`: tables, figures and sections, the page they compose into,
  and figure export;
- :mod:`~belief_lens.report.analysis`: :class:`AnalysisConfig` and :func:`analyse`, the analysis
  in named steps;
- :mod:`~belief_lens.report.sections`: the analysis's sections, worded and drawn from its numbers;
- :mod:`~belief_lens.report.experiment_sections`: the factored-geometry, shared-structure,
  attention and in-context-learning sections.
"""

from belief_lens.report.analysis import Analysis, AnalysisConfig, AnalysisMode, analyse
from belief_lens.report.document import (
    ExportFormat,
    ReportFigure,
    Section,
    Table,
    compose_html,
    export_figures,
    write_report,
)
from belief_lens.report.experiment_sections import (
    attention_section,
    factored_section,
    factored_seeds_section,
    icl_section,
    shared_structure_section,
)
from belief_lens.report.sections import CLEAR_R2_MARGIN, UNDERTRAINED_RATIO, undertrained_warning

__all__ = [
    "CLEAR_R2_MARGIN",
    "UNDERTRAINED_RATIO",
    "Analysis",
    "AnalysisConfig",
    "AnalysisMode",
    "ExportFormat",
    "ReportFigure",
    "Section",
    "Table",
    "analyse",
    "attention_section",
    "compose_html",
    "export_figures",
    "factored_section",
    "icl_section",
    "factored_seeds_section",
    "shared_structure_section",
    "undertrained_warning",
    "write_report",
]
