from mmvit.cli import app

app(prog_name="mmvit-study")
