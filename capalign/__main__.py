from capalign.cli import main

main()
