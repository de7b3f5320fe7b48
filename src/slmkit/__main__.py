from slmkit.cli import main

main()
