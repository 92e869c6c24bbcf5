"""Evaluate a fairseq translation checkpoint (``sage-evaluate``): fairseq-generate, tokenized BLEU (fairseq's scorer),
sacreBLEU and chrF, recorded in a JSON file. What a user sees of it: docs/toolkit.md ("sage-evaluate").

:func:`evaluate` runs these steps, each a function here:

1. :func:`check_inputs`: everything that is refused before a file is written, each in one line naming the file or
   option (a subset without sentences, a checkpoint made for other dictionaries, a result of other settings in the
   way: :func:`check_overwrite`); averaging is :mod:`.checkpoints`, the data-bin's facts :mod:`.dataset`.
2. :func:`generate`: fairseq-generate with the data-bin's ``--remove-bpe`` (:mod:`.generation`), its output kept.
3. :func:`tokenized_bleu`: fairseq's scorer against the tokenised reference (``ref/{subset}.tok.{tgt}``, else the T-
   lines), compound-split where ``bleu_tok_kind`` says so. Sentencepiece preparations have no tokenised reference:
   their detokenised text is split at spaces (fairseq-generate's own BLEU), so report sacreBLEU for them.
4. :func:`detokenized_scores`: sacreBLEU and chrF (13a, lowercased for lowercased preparations) on the detokenised
   hypotheses against ``ref/{subset}.{tgt}``, else the detokenised T- lines.
5. The JSON, written atomically, beside the files of :func:`output_files`. Hypotheses that still hold subword markers
   (a missing ``--remove-bpe``) are scored as they are, with a warning and ``subword_markers`` in the JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation import generation
from sage_toolkit.evaluation.checkpoints import resolve_checkpoints, write_average
from sage_toolkit.evaluation.dataset import Setup, check_checkpoint_fits, check_data_bin, resolve_setup
from sage_toolkit.evaluation.options import EvalOptions
from sage_toolkit.evaluation.scoring import (
    compound_split,
    detokenize,
    fairseq_bleu,
    read_text_lines,
    sacrebleu_scores,
    subword_markers,
    translation_scores,
)

PROG = "sage-evaluate"  # the console script; also the prefix of its messages
# key in the JSON (and its "options") -> the option that sets it
OPTION_FLAGS = {
    "data_bin": "--data-bin", "checkpoints": "--checkpoint (the checkpoint files)", "average_last": "--average-last",
    "subset": "--subset", "beam": "--beam", "lenpen": "--lenpen", "source_lang": "--source-lang",
    "target_lang": "--target-lang", "remove_bpe": "--remove-bpe", "detokenizer": "--detok",
    "sacrebleu_lowercase": "--lowercase", "bleu_tok_kind": "--bleu-tok-kind", "reference": "--ref",
    "tokenized_reference": "--tok-ref",
}  # fmt: skip


def write_lines(path: Path, lines: list[str]) -> Path:
    return write_atomic(path, "".join(f"{line}\n" for line in lines))


def result_options(options: EvalOptions, setup: Setup, used: list[Path]) -> dict:
    """What a result depends on (not the batching: --max-tokens and --batch-size only group the sentences)."""
    return {
        "data_bin": str(options.data_bin.resolve()),
        "checkpoints": [str(p.resolve()) for p in used],
        "average_last": options.average_last,
        "subset": options.subset,
        "beam": options.beam,
        "lenpen": options.lenpen,
        "source_lang": setup.src,
        "target_lang": setup.tgt,
        "remove_bpe": setup.remove_bpe,
        "detokenizer": setup.detok,
        "sacrebleu_lowercase": setup.lowercase,
        "bleu_tok_kind": setup.bleu_tok_kind,
        "reference": str(Path(setup.ref).resolve()) if setup.ref is not None else None,
        "tokenized_reference": str(Path(setup.tok_ref).resolve()) if setup.tok_ref is not None else None,
    }


def check_overwrite(out: Path, options: dict) -> None:
    """Refuse to replace a result made with other settings (compared on the keys both record; results written
    before ``options`` existed are compared on their top-level keys of the same names)."""
    if not out.exists():
        return
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
        recorded = previous.get("options") or {k: previous[k] for k in OPTION_FLAGS if k in previous}
    except (OSError, ValueError, AttributeError) as e:
        raise ToolkitError(
            f"--out {out} exists and is not a result of this script ({type(e).__name__}: {e}); "
            "give another --out, or --overwrite to replace it"
        ) from None
    differences = [
        f"{OPTION_FLAGS[key]}: {recorded[key]!r} there, {options[key]!r} now"
        for key in OPTION_FLAGS
        if key in recorded and key in options and recorded[key] != options[key]
    ]
    if differences:
        raise ToolkitError(
            f"{out} holds a result made with other settings ({'; '.join(differences)}): not replaced; "
            "give another --out to keep both, or --overwrite to replace it"
        )


def _note(setup: Setup) -> str:
    return (
        "bleu_tok: fairseq's scorer (fairseq-score) on tokenized_hypotheses vs tokenized_references"
        + (
            " after compound splitting (fairseq scripts/compound_split_bleu.sh)"
            if setup.bleu_tok_kind == "compound_split"
            else ""
        )
        + "; sacrebleu/chrf/bp/sys_len/ref_len: sacreBLEU on hypotheses vs sacrebleu_reference"
        + (", lowercased (lowercased preparation)" if setup.lowercase else "")
        + (
            "; sentencepiece: bleu_tok splits the detokenised text at spaces (fairseq-generate's own BLEU), "
            "not comparable with published tokenized BLEU: report sacreBLEU"
            if setup.remove_bpe == "sentencepiece"
            else ""
        )
    )


def _threads() -> int:
    """The intra-op thread count fairseq-generate ran with: it inherits this process's environment (OMP_NUM_THREADS),
    so torch's count here is its count there."""
    import torch

    return torch.get_num_threads()


def evaluate(options: EvalOptions) -> dict:
    """Translate and score (see the module docstring); returns the result written to the JSON, plus ``json`` (its
    path). Raises :class:`ToolkitError` before writing anything when an input is missing or a result made with other
    settings is in the way."""
    start = time.time()
    options = options.absolute()
    setup, checkpoint, used, out, recorded_options = check_inputs(options)
    write_average(checkpoint, used, PROG)
    files = output_files(out, setup.tgt)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = generate(options, setup, checkpoint, out, files["generate"])
    hyps_tok, targets, generate_bleu = generation.parse_generate(files["generate"])
    markers = subword_markers(hyps_tok, setup.remove_bpe)
    if markers.get("warning"):
        print(f"{PROG}: WARNING: {markers['warning']}", file=sys.stderr, flush=True)
    tok, tok_ref_source = tokenized_bleu(setup, options.subset, hyps_tok, targets, files)
    sb, ref_source = detokenized_scores(setup, options.subset, hyps_tok, targets, files)
    result = {
        **run_settings(options, setup, checkpoint, used, len(hyps_tok)),
        **translation_scores(tok, sb, setup.bleu_tok_kind, tok_ref_source, setup.lowercase, ref_source).to_json(),
        "detokenizer": setup.detok,
        "note": _note(setup),
        "fairseq_generate_bleu": generate_bleu,
        "hypotheses": str(files["hyp"].resolve()),
        "tokenized_hypotheses": str(files["tok_hyp"].resolve()),
        "tokenized_references": str(files["tok_ref"].resolve()),
        "generate_output": str(files["generate"].resolve()),
        "generate_command": cmd,
        "subword_markers": markers,
        "options": recorded_options,
        "elapsed_s": round(time.time() - start, 1),
        "threads": _threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if setup.ref is None:  # the reference was written from the T- lines
        result["references"] = str(files["ref"].resolve())
    write_atomic(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    result["json"] = str(out)
    return result


def check_inputs(options: EvalOptions) -> tuple[Setup, Path, list[Path], Path, dict]:
    """Everything that can be refused before a file is written: (the data-bin's setup, the checkpoint to translate
    with, the checkpoint files it is made of, the JSON's path, the options the result records)."""
    if not options.data_bin.is_dir():
        raise ToolkitError(f"--data-bin {options.data_bin} is not a folder")
    setup = resolve_setup(options.data_bin, options.subset, options.overrides)
    check_data_bin(options.data_bin, setup, options.subset)
    checkpoint, used = resolve_checkpoints(options.checkpoint, options.average_last, options.average_by)
    ckpt_dir = options.checkpoint if options.checkpoint.is_dir() else options.checkpoint.parent
    out = options.out if options.out is not None else ckpt_dir / f"eval.{options.subset}.json"
    recorded_options = result_options(options, setup, used)
    if not options.overwrite:
        check_overwrite(out, recorded_options)
    check_checkpoint_fits(used[0], options.data_bin, setup)  # (the averaged ones have the same shapes)
    return setup, checkpoint, used, out, recorded_options


def output_files(out: Path, tgt: str) -> dict[str, Path]:
    """The files written next to the JSON (``ref`` only when the reference comes from the T- lines)."""
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {
        "generate": Path(f"{stem}.generate.txt"),
        "hyp": Path(f"{stem}.hyp.{tgt}"),
        "tok_hyp": Path(f"{stem}.tok.hyp.{tgt}"),
        "tok_ref": Path(f"{stem}.tok.ref.{tgt}"),
        "ref": Path(f"{stem}.ref.{tgt}"),
    }


def generate(options: EvalOptions, setup: Setup, checkpoint: Path, out: Path, output: Path) -> list[str]:
    """Run fairseq-generate into a scratch folder beside ``out``, keep its output in ``output``; returns the
    command."""
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as results_dir:
        cmd = generation.generate_command(options, setup, checkpoint, Path(results_dir))
        print(f"{PROG}: " + " ".join(cmd), flush=True)
        generation.run_generate(cmd, Path(results_dir), options.subset, output)
    return cmd


def run_settings(options: EvalOptions, setup: Setup, checkpoint: Path, used: list[Path], n_sentences: int) -> dict:
    """The result's first keys: what was translated, with what and how."""
    return {
        "subset": options.subset,
        "n_sentences": n_sentences,
        "data_bin": str(options.data_bin.resolve()),
        "dataset": setup.dataset,
        "source_lang": setup.src,
        "target_lang": setup.tgt,
        "checkpoints": [str(p.resolve()) for p in used],
        "checkpoint": str(checkpoint.resolve()),
        "average_last": options.average_last,
        "beam": options.beam,
        "lenpen": options.lenpen,
        "max_tokens": options.max_tokens,
        "batch_size": options.batch_size,
        "remove_bpe": setup.remove_bpe,
    }


def tokenized_bleu(setup: Setup, subset: str, hyps_tok: list[str], targets: list[str], files: dict) -> tuple[dict, str]:
    """Step 3: fairseq's scorer on the tokenised hypotheses and reference (written to ``tok_hyp``/``tok_ref``), and
    where that reference came from."""
    if setup.tok_ref is not None:
        refs_tok, tok_ref_source = read_text_lines(setup.tok_ref), str(setup.tok_ref)
        if len(refs_tok) != len(hyps_tok):
            raise ToolkitError(
                f"the tokenised reference {setup.tok_ref} has {len(refs_tok)} lines, {subset} has {len(hyps_tok)}"
            )
    else:
        refs_tok, tok_ref_source = targets, "T- lines of fairseq-generate"
    sys_tok = list(hyps_tok)
    if setup.bleu_tok_kind == "compound_split":
        sys_tok, refs_tok = [compound_split(x) for x in sys_tok], [compound_split(x) for x in refs_tok]
    write_lines(files["tok_hyp"], sys_tok)
    write_lines(files["tok_ref"], refs_tok)
    return fairseq_bleu(read_text_lines(files["tok_hyp"]), read_text_lines(files["tok_ref"])), tok_ref_source


def detokenized_scores(
    setup: Setup, subset: str, hyps_tok: list[str], targets: list[str], files: dict
) -> tuple[dict, str]:
    """Step 4: sacreBLEU and chrF on the detokenised hypotheses (written to ``hyp``) against the data-bin's reference,
    else the detokenised T- lines (written to ``ref``); and where that reference came from."""
    write_lines(files["hyp"], detokenize(hyps_tok, setup.detok, setup.tgt))
    if setup.ref is not None:
        ref_path, ref_source = Path(setup.ref), str(setup.ref)
    else:
        ref_path = write_lines(files["ref"], detokenize(targets, setup.detok, setup.tgt))
        ref_source = f"T- lines of fairseq-generate, detokenised ({setup.detok}): {ref_path}"
    hyps, refs = read_text_lines(files["hyp"]), read_text_lines(ref_path)
    if len(refs) != len(hyps_tok):
        raise ToolkitError(
            f"the reference {ref_path} has {len(refs)} lines, but {subset} has {len(hyps_tok)} sentences"
        )
    return sacrebleu_scores(hyps, refs, setup.lowercase), ref_source


def summary_line(result: dict) -> str:
    """The command's last line: subset, checkpoints, the three scores and the JSON's path."""
    r = result
    kind = "compound-split" if r["bleu_tok_kind"] == "compound_split" else "tokenized"
    return (
        f"{PROG}: {r['subset']} ({r['n_sentences']} sentences), {len(r['checkpoints'])} checkpoint(s): "
        f"BLEU ({kind}) {r['bleu_tok']:.2f} | sacreBLEU {r['sacrebleu']:.2f} ({r['sacrebleu_signature']}) | "
        f"chrF {r['chrf']:.2f} -> {r['json']}"
    )
