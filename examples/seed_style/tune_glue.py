"""The glue that makes train.py tunable; all of it.

    cd examples/seed_style
    reid-tune search --trainable tune_glue:train --config defaults.yaml --space space.yaml
    reid-tune run --trainable tune_glue:train --config tune_results/NAME/best_config.json --out runs/best
"""

from configs.config import Config
import train as seed_train


def train(config: dict, report) -> dict:
    """The contract (reid_core.contract): the config is ours (configs/config.py), report goes per step."""
    return seed_train.train(Config.from_dict(config), on_step=report, resume=report.resume)
