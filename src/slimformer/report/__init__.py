from .markdown import render, write_report
from .table import md_table, text_table
from .views import (COMPARISON_HEADERS, EVAL_HEADERS, bench_rows, comparison_rows, environment_line,
                    eval_rows)

__all__ = ["render", "write_report", "md_table", "text_table", "COMPARISON_HEADERS", "EVAL_HEADERS",
           "bench_rows", "comparison_rows", "environment_line", "eval_rows"]
