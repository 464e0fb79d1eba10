from lmql_core.cli import main

main()
