from tinymlops.cli import main

main()
