"""Study-runner overhead; same as `mmvit-study bench study`. Usage: python benchmarks/study.py [OPTIONS]"""

import sys

from mmvit.cli import app

if __name__ == "__main__":  # Ray trials run in worker processes
    app(["bench", "study", *sys.argv[1:]], prog_name="mmvit-study")
