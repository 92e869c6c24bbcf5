"""What a (pruned) model is worth on the measured split: the criterion's loss, and BLEU of its translations.

- Loss: the criterion's loss over the whole split divided by its sample size (target tokens, unless the model was
  trained with ``--sentence-avg``), in base 2: what fairseq reports as ``valid_loss``; and the NLL per target token
  (base 2) when the criterion reports it.
- BLEU: sacreBLEU of the detokenised greedy (or beam) translations, produced in-process by fairseq's
  SequenceGenerator and scored as ``scripts/evaluate.py`` scores them (sage_toolkit.evaluation: the data-bin's
  ``prep.json`` decides ``--remove-bpe``, detokenisation, lowercasing and the reference; without it the T- lines of
  the binarised target are the reference).
"""

from __future__ import annotations

import math
from pathlib import Path

from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation.dataset import resolve_setup
from sage_toolkit.evaluation.scoring import detokenize, read_text_lines, sacrebleu_scores
from sage_toolkit.redundancy.model import batches, to_device
from sage_toolkit.redundancy.options import RedundancyOptions


def validation_loss(model, criterion, task, *, subset: str, max_tokens: int, seed: int, use_cuda: bool) -> dict:
    """The criterion's loss and NLL per target token (base 2) over the whole subset, as fairseq's validation."""
    import torch

    loss_sum = nll_sum = 0.0
    sample_size = ntokens = 0
    with torch.no_grad():
        for sample in batches(task, model, subset, max_tokens, shuffle=False, seed=seed):
            if not sample or "net_input" not in sample:
                continue
            _, size, log = criterion(model, to_device(sample, use_cuda))
            loss_sum += float(log["loss"])
            nll_sum += float(log.get("nll_loss", float("nan")))
            sample_size += int(size)
            ntokens += int(log["ntokens"])
    loss = loss_sum / sample_size / math.log(2)
    nll = nll_sum / ntokens / math.log(2)
    return {"loss": loss, "nll_loss": None if math.isnan(nll) else nll}


class BleuScorer:
    """Greedy/beam translation of ``options.subset`` in-process, scored with sage_toolkit.evaluation's sacreBLEU
    settings for the data-bin (read once, at construction)."""

    def __init__(self, task, options: RedundancyOptions):
        self.setup = resolve_setup(options.data_bin, options.subset)
        self.refs = None
        if self.setup.ref is not None:
            if not Path(self.setup.ref).is_file():
                raise ToolkitError(f"the sacreBLEU reference {self.setup.ref} (from prep.json) does not exist")
            self.refs = read_text_lines(self.setup.ref)
            n, subset = len(task.dataset(options.subset)), options.subset
            if len(self.refs) != n:
                raise ToolkitError(f"the reference {self.setup.ref} has {len(self.refs)} lines, {subset} has {n}")
        self.options = options

    def __call__(self, model, task, use_cuda: bool) -> dict:
        import torch
        from fairseq import utils
        from fairseq.dataclass.configs import GenerationConfig

        o = self.options
        gen_cfg = GenerationConfig(beam=o.beam, max_len_a=o.max_len_a, max_len_b=o.max_len_b)
        generator = task.build_generator([model], gen_cfg)
        strip = getattr(generator, "symbols_to_strip_from_output", {generator.eos})
        tgt_dict = task.target_dictionary
        remove_bpe = self.setup.remove_bpe
        hyps: dict[int, str] = {}
        tgts: dict[int, str] = {}
        with torch.no_grad():
            for sample in batches(task, model, o.subset, o.max_tokens, False, o.seed):
                if not sample or "net_input" not in sample:
                    continue
                out = task.inference_step(generator, [model], to_device(sample, use_cuda))
                for i, sid in enumerate(sample["id"].tolist()):
                    # the H- line text of fairseq-generate (utils.post_process_prediction's string; not that
                    # function itself: with --remove-bpe it re-encodes the string and adds its words to the dictionary)
                    hyp_tokens = out[i][0]["tokens"].int().cpu()
                    hyps[sid] = tgt_dict.string(hyp_tokens, remove_bpe, extra_symbols_to_ignore=strip)
                    target = utils.strip_pad(sample["target"][i], tgt_dict.pad()).int().cpu()
                    tgts[sid] = tgt_dict.string(target, remove_bpe, escape_unk=True, extra_symbols_to_ignore=strip)
        ids = sorted(hyps)
        hyp_lines = detokenize([hyps[i] for i in ids], self.setup.detok, self.setup.tgt)
        if self.refs is not None:
            refs = [self.refs[i] for i in ids]
        else:
            refs = detokenize([tgts[i] for i in ids], self.setup.detok, self.setup.tgt)
        sb = sacrebleu_scores(hyp_lines, refs, self.setup.lowercase)
        return {"bleu": sb["sacrebleu"], "bleu_signature": sb["sacrebleu_signature"], "bleu_sentences": len(ids)}
