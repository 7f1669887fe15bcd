from throttledetect.cli import main

main()
