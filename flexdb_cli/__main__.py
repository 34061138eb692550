from flexdb_cli.main import main

main()
