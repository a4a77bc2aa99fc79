"""Step 1 of splitting experiments/evaluation.py into a package: the module moved unchanged to
episodes.py (so that git follows its history); the next commit splits it into modules."""

import sys

from experiments.evaluation import episodes

sys.modules[__name__] = episodes
