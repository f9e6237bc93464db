from letterbird.cli.main import main

main()
