from qsink.cli import main

main()
