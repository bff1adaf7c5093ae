from ffpipe.cli import run

run()
