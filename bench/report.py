"""The whole comparison in one command: every model on every dataset, bench/REPORT.md + plots.

A thin wrapper of ``gru-engine report`` (logic in :mod:`gru_engine.report`); run from the
repository root::

    python bench/report.py --quick                              # the bundled sample, minutes
    python bench/report.py --data ../shared/data                # every shared dataset
    python bench/report.py --data ../shared/data --max-epochs 3 --datasets diginetica

A killed run resumes: finished (dataset, model) cells are cached as JSON under
``bench/out/report_cells`` and reused while their parameters and caps are unchanged.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gru_engine.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
