"""Data-path benchmark; same as `mmvit-study bench data`. Usage: python benchmarks/data.py [ROOT]"""

import sys

from mmvit.cli import app

app(["bench", "data", *sys.argv[1:]], prog_name="mmvit-study")
