from campaignd.cli import main

main()
