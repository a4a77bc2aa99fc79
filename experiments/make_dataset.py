r"""Regenerate OGBench manipulation `play` datasets offline with the scripted oracles.

OGBench downloads its datasets from the internet. The manipulation datasets (cube, scene, puzzle)
were collected by the scripted "plan" oracles that ship inside the pip package
(`ogbench.manipspace.oracles.plan`), so they can be regenerated on a machine without internet.
This module drives those oracles with its own collection loop and writes files with the same
keys, dtypes and row layout as the official ones, so that `ogbench.make_env_and_datasets(...,
dataset_dir=DIR)` loads them without trying to download anything.

File layout (one row per environment step; each episode has `episode_length` rows):

    observations  float32 (N, ob_dim)   observation s_t
    actions       float32 (N, 5)        oracle action a_t, clipped to [-1, 1]
    terminals     bool    (N,)          True on the last row of every episode
    qpos          float32 (N, nq)       MuJoCo qpos of s_t (used by ogbench to relabel rewards)
    qvel          float32 (N, nv)       MuJoCo qvel of s_t
    button_states int64   (N, buttons)  button states of s_t (scene and puzzle only)

With the official 1001 rows per episode, ogbench's loader turns each episode into 1000
transitions (the last row only provides the final next observation).

Naming:
  * `<domain>-play-v0`: `<dataset_dir>/<domain>-play-v0.npz` and `<dataset_dir>/<domain>-play-v0-val.npz`.
  * `<domain>-play-100m-v0` (OGBench's 100M release, 100 shards of 1M transitions):
    `<dataset_dir>/<domain>-play-100m-v0/<domain>-play-v0-000.npz` and `...-000-val.npz`, up to
    `-099`. `--num_shards`/`--shard_start` pick which shards to write, e.g. `--num_shards=10`
    gives the 10M subset (shards 000-009).
  * `<domain>-play-10m-v0` (the 10M sets of the protocol): shards 000-009, the same bytes as those of
    the 100M release, in `<dataset_dir>/<domain>-play-10m-v0/`.

Every episode is seeded from (seed, shard, split, episode index), so the output does not depend on
the number of workers, and the same seed gives byte-identical files. Files appear atomically: each
is written under a hidden temporary name ending in `.tmp` in the same directory and renamed at the
end; an interrupted run leaves no file with a final name.

Examples:
    python -m experiments.make_dataset --dataset=cube-double-play-v0 --num_workers=2
    python -m experiments.make_dataset --dataset=cube-single-play-v0 --num_episodes=10 \
        --episode_length=201 --dataset_dir=/tmp/ogbench_data
    python -m experiments.make_dataset --dataset=cube-triple-play-100m-v0 --num_shards=10
"""

import os
import signal
import sys

from absl import app

from experiments.data.generation import generate_dataset
from experiments.data.generation_plan import DEFAULT_EPISODE_LENGTH, MakeDatasetError
from experiments.data.names import DEFAULT_DATASET_DIR


def _define_flags():
    from absl import flags

    flags.DEFINE_list('dataset', None, 'Dataset name(s), e.g. cube-double-play-v0 or cube-triple-play-100m-v0.')
    flags.DEFINE_string('dataset_dir', DEFAULT_DATASET_DIR, 'Output directory (ogbench dataset_dir).')
    flags.DEFINE_integer('num_episodes', None, 'Train episodes per file (default: official count).')
    flags.DEFINE_integer('episode_length', DEFAULT_EPISODE_LENGTH, 'Rows per episode (transitions + 1).')
    flags.DEFINE_float('val_fraction', 0.1, 'Val episodes as a fraction of num_episodes (at least 1).')
    flags.DEFINE_integer('seed', 0, 'Base seed.')
    flags.DEFINE_integer('num_workers', os.cpu_count() or 1, 'Worker processes.')
    flags.DEFINE_integer('num_shards', None, 'Shards to write for -100m-v0 datasets (default 100).')
    flags.DEFINE_integer('shard_start', 0, 'First shard index for -100m-v0 datasets.')
    flags.DEFINE_bool('overwrite', False, 'Regenerate files that already exist.')
    flags.DEFINE_bool('compress', True, 'Compress the .npz files (like the official ones).')
    flags.DEFINE_float('noise', 0.1, 'Plan-oracle noise.')
    flags.DEFINE_float('noise_smoothing', 0.5, 'Plan-oracle noise smoothing.')
    flags.mark_flag_as_required('dataset')
    return flags.FLAGS


def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    # Turn SIGTERM into SystemExit so that the temporary files are removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for name in FLAGS.dataset:
            paths = generate_dataset(
                name,
                dataset_dir=FLAGS.dataset_dir,
                num_episodes=FLAGS.num_episodes,
                episode_length=FLAGS.episode_length,
                seed=FLAGS.seed,
                num_workers=FLAGS.num_workers,
                val_fraction=FLAGS.val_fraction,
                num_shards=FLAGS.num_shards,
                shard_start=FLAGS.shard_start,
                overwrite=FLAGS.overwrite,
                compress=FLAGS.compress,
                noise=FLAGS.noise,
                noise_smoothing=FLAGS.noise_smoothing,
            )
            for path in paths:
                print(path)
    except MakeDatasetError as e:
        raise SystemExit(f'make_dataset: error: {e}') from None


if __name__ == '__main__':
    _define_flags()
    app.run(main)
