"""lm-evaluation-harness task data, fetched once when the image is built (pods run offline).

A pipeline pod cannot reach a dataset hub (``HF_HUB_OFFLINE=1``/``HF_DATASETS_OFFLINE=1`` in the
images, egress limited by the NetworkPolicies), so the evaluate image carries the data of the
benchmarks the shipped configs name: building each task makes the harness download its dataset
into ``HF_DATASETS_CACHE`` and, for ifeval, NLTK's ``punkt_tab`` into ``NLTK_DATA``. The base
image runs ``python -m rtune.components.evaluate.task_data $LM_EVAL_TASKS`` at build time;
``tests/unit/pipelines/test_images.py`` holds that list to the configs' benchmarks.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence


def prefetch(tasks: Sequence[str], include_path: str | None = None) -> list[str]:
    """Build every task once (which downloads its data); returns the tasks built."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    loaded = manager.load(list(tasks))
    return sorted({*loaded["tasks"], *loaded["groups"]})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+", help="lm-eval task or group names, e.g. gsm8k mmlu")
    parser.add_argument("--include-path", help="a folder of extra task YAML files")
    args = parser.parse_args(argv)
    built = prefetch(args.tasks, args.include_path)
    where = os.environ.get("HF_DATASETS_CACHE", "the default datasets cache")
    print(f"task data for {len(built)} task(s) in {where}: {', '.join(built)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
