from medseg_bench.cli import run

run()
