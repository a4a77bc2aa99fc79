from experiments.evaluation.episodes import main

main()
