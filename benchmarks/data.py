"""Data-path benchmark; same as `mmvit-study bench data`. Usage: python benchmarks/data.py [ROOT] [OPTIONS]"""

import sys

from mmvit.cli import app

if __name__ == "__main__":  # cache conversion spawns workers that re-import this module
    app(["bench", "data", *sys.argv[1:]], prog_name="mmvit-study")
