from imagesynth.cli.main import main

main()
