"""Model benchmark; same as `mmvit-study bench models`. Usage: python benchmarks/models.py [OPTIONS]"""

import sys

from mmvit.cli import app

if __name__ == "__main__":  # the benchmark measures each config in a spawned process
    app(["bench", "models", *sys.argv[1:]], prog_name="mmvit-study")
