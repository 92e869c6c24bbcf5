"""A trained fairseq translation checkpoint loaded in-process for the analysis, and batches of its data-bin.

The plugin in ``fairseq_plugins`` is imported first (checkpoints trained with its optimizers load), the data-bin given
here overrides the one saved in the checkpoint, and the criterion is built from the checkpoint's own configuration (for
the recipes: label-smoothed cross-entropy). Model and criterion are in eval mode (no dropout); the checkpoint file is
only read. A split without sentences and a checkpoint made for other dictionaries are refused in one line naming the
file (fairseq: "cannot mmap an empty file", a size-mismatch traceback).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sage_toolkit.paths import PLUGIN_DIR


@dataclass(frozen=True)
class _UserDir:
    """What fairseq's ``utils.import_user_module`` reads from its argument."""

    user_dir: str


def check_data_bin(data_bin: Path, splits: dict[str, str]) -> None:
    """ToolkitError unless ``data_bin`` is a fairseq data-bin with every binarised split of ``splits`` (split -> why
    it is needed, said in the message)."""
    from sage_toolkit.errors import ToolkitError
    from sage_toolkit.evaluation.dataset import check_split_has_sentences

    if not data_bin.is_dir():
        raise ToolkitError(f"--data-bin {data_bin} is not a folder")
    if not any(data_bin.glob("dict.*.txt")):
        raise ToolkitError(f"--data-bin {data_bin} is not a fairseq data-bin (no dict.*.txt)")
    for split, why in splits.items():
        if not any(data_bin.glob(f"{split}.*.idx")):
            raise ToolkitError(f"--data-bin {data_bin} has no binarised {split!r} split ({why})")
        check_split_has_sentences(data_bin, split, why)


def load(checkpoint: Path, data_bin: Path, use_cuda: bool):
    """(model, task, cfg, criterion) for a checkpoint, with the plugin imported and the data-bin overridden."""
    from fairseq import checkpoint_utils, tasks, utils

    from sage_toolkit.evaluation.dataset import check_dictionaries

    utils.import_user_module(_UserDir(user_dir=str(PLUGIN_DIR)))
    overrides = {"data": str(data_bin)}
    # fairseq's own steps, with the data-bin's dictionaries checked against the checkpoint before the model is built
    state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint), overrides)
    task = tasks.setup_task(state["cfg"].task)
    check_dictionaries(checkpoint, state["model"], task_dictionaries(task, data_bin))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides=overrides, task=task, state=state
    )
    model = models[0].float()
    if use_cuda:
        model = model.cuda()
    model.eval()
    criterion = task.build_criterion(cfg.criterion)
    if use_cuda:
        criterion = criterion.cuda()
    criterion.eval()
    return model, task, cfg, criterion


def task_dictionaries(task, data_bin: Path) -> dict[str, tuple[Path, int]]:
    """``"encoder"``/``"decoder"`` -> (dictionary file, entries) of a translation task set up on ``data_bin``."""
    found = {}
    for side, lang_key, dictionary in (("encoder", "source_lang", task.source_dictionary),
                                       ("decoder", "target_lang", task.target_dictionary)):  # fmt: skip
        lang = getattr(task.cfg, lang_key, None)
        if dictionary is not None and lang:
            found[side] = (Path(data_bin) / f"dict.{lang}.txt", len(dictionary))
    return found


def batches(task, model, subset: str, max_tokens: int, shuffle: bool, seed: int):
    """The subset's length-bucketed batches (fairseq's batch iterator), in a shuffled order with ``seed`` or not."""
    from fairseq import utils

    if subset not in task.datasets:
        task.load_dataset(subset, combine=False, epoch=1)
    dataset = task.dataset(subset)
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens, max_positions=utils.resolve_max_positions(task.max_positions(),
        model.max_positions()), ignore_invalid_inputs=True, seed=seed, num_workers=0, disable_iterator_cache=True,
    )  # fmt: skip
    return itr.next_epoch_itr(shuffle=shuffle)


def to_device(sample, use_cuda: bool):
    from fairseq import utils

    return utils.move_to_cuda(sample) if use_cuda else sample
