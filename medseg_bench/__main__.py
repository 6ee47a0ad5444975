from medseg_bench.cli.app import main

main()
