"""A trial's training samples/s next to timm's train step; same as `mmvit-study bench train`.
Usage: python benchmarks/train.py [--config small --config thesis] [--device cuda] [OPTIONS]"""

import sys

from mmvit.cli import app

if __name__ == "__main__":
    app(["bench", "train", *sys.argv[1:]], prog_name="mmvit-study")
