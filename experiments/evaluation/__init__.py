"""Vectorised evaluation and online env stepping for S seeds at once (conventions §9 and §10).

  vector      the gymnasium vector envs of OGBench envs (sync or async worker processes), worker counts
  episodes    `Evaluator` / `evaluate`: S seeds x E episodes, in rounds of E_r envs per seed
  background  `BackgroundEvaluator`: evaluations on a background thread, beside training
  online      `OnlineEnvs`: one env per seed for online RL, transitions in the dataset convention
  __main__    the speed benchmark, `python -m experiments.evaluation --benchmark`

Importing this package does not import JAX; the env worker processes import only
`experiments.env_workers`.
"""

from experiments.evaluation.background import BackgroundEvaluator, background_episodes_per_round
from experiments.evaluation.episodes import Evaluator, evaluate
from experiments.evaluation.online import OnlineEnvs
from experiments.evaluation.vector import default_num_workers, make_vector_env

__all__ = [
    'BackgroundEvaluator',
    'Evaluator',
    'OnlineEnvs',
    'background_episodes_per_round',
    'default_num_workers',
    'evaluate',
    'make_vector_env',
]
