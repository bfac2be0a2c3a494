from mmvit.cli import app

if __name__ == "__main__":  # spawned worker processes re-import this module
    app(prog_name="mmvit-study")
