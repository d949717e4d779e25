"""Name the fungus in photos: the package side of ``test.py`` (its flags: :func:`amanita.cli.parse_identify_config`).

For each image: the predicted class and confidence at each of the six ranks, the top-k species
(accepted names; a synonym's own scientificName beside it), the finest rank whose confidence
reaches ``--backoff``, and whether any top-k species is poisonous. Predictions come from
:func:`amanita.inference.predict`, the pipeline validation and the submission use too.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from amanita.calibration import lineage_confidence
from amanita.config import IdentifyConfig
from amanita.data import BAD_IMAGE
from amanita.decisions import costs_of, make_decoder, poison_probability, poisonous_leaves
from amanita.decode import Decoder
from amanita.inference import LoadedModel, Settings, expand_inputs, files_source, load_model, predict, readout
from amanita.io import UserError, check_output_file
from amanita.openset import is_unknown, readout_conditions, score_column, unknown_scores
from amanita.openset import unknown_rule as openset_rule
from amanita.taxonomy import LEAF, RANKS, Taxonomy, label_column


# ---------------------------------------------------------------------- inference
def batch_answers(decoder: Decoder, logp: dict, energy: torch.Tensor, top_k: int, score: str) -> dict:
    """Per-rank predicted index, lineage and own confidence, the top-k leaves with their probabilities,
    the unknown-species ``score`` and the probability of poison, from log-probabilities (of images, or of
    pooled finds) ``{key: (B, C)}`` and the leaf energy (B,).

    Returns numpy arrays: ``pred[rank]``, ``conf[rank]`` (lineage) and ``head_conf[rank]`` (B,),
    ``top_leaf`` and ``top_p`` (B, k), ``unknown`` and ``poison`` (B,).
    """
    preds = decoder.decode(logp)
    lineage = lineage_confidence(logp[LEAF], preds, decoder.ancestors)
    top = logp[LEAF].topk(min(top_k, logp[LEAF].shape[1]), dim=1)
    return {"pred": {r: preds[r].cpu().numpy() for r in RANKS},
            "conf": {r: lineage[r].cpu().numpy() for r in RANKS},
            "head_conf": {r: logp[r].gather(1, preds[r][:, None]).squeeze(1).exp().cpu().numpy() for r in RANKS},
            "top_leaf": top.indices.cpu().numpy(), "top_p": top.values.exp().cpu().numpy(),
            "unknown": unknown_scores(logp[LEAF], energy)[score_column(score)].cpu().numpy(),
            "poison": poison_probability(logp[LEAF], torch.as_tensor(poisonous_leaves(decoder.taxonomy),
                                                                     device=logp[LEAF].device)).cpu().numpy()}


def unknown_rule(cfg: IdentifyConfig, info: dict) -> tuple[str, float | None]:
    """``(score, threshold)`` of :func:`amanita.openset.unknown_rule` for test.py's flags and the checkpoint
    (threshold None: no verdict); the submission applies the same rule."""
    return openset_rule(info.get("open_set"), cfg.unknown_score, cfg.unknown_threshold,
                        readout_conditions(cfg.temperatures(info), cfg.tta))


def unknown_answer(record: dict, score: float, threshold: float | None, backoff: float) -> None:
    """Add the unknown-species verdict to ``record`` in place: above the threshold, the species is not
    named; the answer is the finest rank above it whose lineage confidence reaches ``backoff``."""
    record["unknown_score"] = score
    if threshold is None:
        return
    record["unknown_species"] = bool(is_unknown(score, threshold))
    if record["unknown_species"]:
        known = [s for s in record["lineage"][:-1] if s["confidence"] >= backoff]
        record["answer"] = (f"an unknown species of {known[-1]['rank']} {known[-1]['name']}" if known
                            else "an unknown species (no rank is confident)")


def poison_answer(record: dict, batch: dict, i: int, warn_above: float) -> None:
    """Add the total probability that the find is poisonous, and the warning above ``warn_above``, in place."""
    record["poisonous_probability"] = float(batch["poison"][i])
    record["poison_warning"] = bool(record["poisonous_probability"] > warn_above)


def describe(path: Path, batch: dict, i: int, tax: Taxonomy, poisonous: np.ndarray, backoff: float) -> dict:
    """The JSON record of image ``i`` of a batch (see --json)."""
    lineage = [{"rank": r, "name": tax.classes[r][int(batch["pred"][r][i])],
                "confidence": float(batch["conf"][r][i]), "rank_confidence": float(batch["head_conf"][r][i])}
               for r in RANKS]
    species_col = tax.ancestors[:, RANKS.index("species")]
    topk = []
    for leaf, p in zip(batch["top_leaf"][i], batch["top_p"][i]):
        s = int(species_col[leaf])
        topk.append({"species": tax.classes["species"][s] if s >= 0 else tax.scientific_names[leaf],
                     "scientificName": tax.scientific_names[leaf], "category_id": int(tax.category_ids[leaf]),
                     "probability": float(p), "poisonous": bool(poisonous[leaf])})
    confident = [step for step in reversed(lineage) if step["confidence"] >= backoff]
    return {"path": printable(path), "lineage": lineage, "topk": topk,
            "backoff": confident[0] if confident else None,
            "poisonous_in_topk": any(t["poisonous"] for t in topk)}


def printable(path: Path) -> str:
    """The path as valid UTF-8: bytes that are not UTF-8 in a file name are shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def terminal_safe(text: str) -> str:
    """``text`` with control and format characters escaped (``\\x1b``, ``\\u202e``), as ``--json`` escapes them.

    A taxon name or file name holding an ANSI escape then cannot recolour or rewrite a terminal.
    """
    import unicodedata
    return "".join(c if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


def find_of(path: Path, inputs: list[str]) -> str:
    """The find a file belongs to with --observation: the innermost folder given that holds it (a folder
    inside another is a find of its own), else all files given by name."""
    holders = [Path(t) for t in inputs if Path(t).is_dir() and Path(t).resolve() in path.resolve().parents]
    return str(max(holders, key=lambda d: len(d.resolve().parts))) if holders else "files given by name"


def identify_files(cfg: IdentifyConfig, loaded: LoadedModel, paths: list[Path], on_result, on_error) -> None:
    """Predict ``paths`` through :func:`amanita.inference.predict`; ``on_result(record)`` per image (per
    find with --observation), as the batches come, ``on_error(path, reason, bar)`` per bad file."""
    decoder = make_decoder(loaded.taxonomy, loaded.device, cfg.decode, cfg.decision, costs_of(cfg))
    priors = metadata_priors(cfg, loaded)
    unknown = unknown_rule(cfg, loaded.info)
    finds = [find_of(p, cfg.inputs) for p in paths] if cfg.observation else None
    source = files_source(loaded, paths, finds)
    folders = any(Path(p).is_dir() for p in cfg.inputs)
    # disable=None: a bar only on a terminal, so logs and pipes stay clean; always on stderr
    bar = tqdm(total=len(paths), disable=None if folders else True, desc="images", unit="img", file=sys.stderr)
    answers = ImageAnswers(cfg, decoder, source.dataset, unknown, bar, on_result, on_error)
    transform = None if priors is None else (lambda batches: priors[0].batches(batches, priors[1].expand(len(paths), -1)))
    how = Settings(decoder, cfg.amp, readout(cfg, loaded.info), cfg.combine, cfg.batch_size, cfg.workers,
                   progress=False)
    result = predict(loaded, source, how, transform, on_batch=answers)
    bar.close()
    if cfg.observation:
        answered = identify_finds(cfg, answers, result.pooler, finds, on_result)
        unanswered_finds(cfg.inputs, answered, [p for p, ok in zip(paths, answers.readable) if not ok], on_result)


class ImageAnswers:
    """test.py's answers as the batches of the pass come: a record per readable image (none with
    --observation: the finds are answered after the pass), an error per unreadable file."""

    def __init__(self, cfg: IdentifyConfig, decoder: Decoder, dataset, unknown: tuple, bar, on_result, on_error):
        self.cfg, self.decoder, self.dataset, self.unknown, self.bar = cfg, decoder, dataset, unknown, bar
        self.on_result, self.on_error = on_result, on_error
        self.poisonous = poisonous_leaves(decoder.taxonomy)
        self.readable = np.ones(len(dataset), dtype=bool)

    def __call__(self, batch: tuple) -> None:
        logp, labels, rows, energy = batch
        cfg, paths = self.cfg, self.dataset.paths
        bad = (label_column(labels, LEAF) == BAD_IMAGE).cpu().numpy()
        answers = None if cfg.observation else batch_answers(self.decoder, logp, energy, cfg.top_k, self.unknown[0])
        for j, i in enumerate(torch.as_tensor(rows).tolist()):
            if bad[j]:
                self.readable[i] = False
                self.on_error(paths[i], self.dataset.reason(i), self.bar)
            elif answers is not None:
                record = describe(paths[i], answers, j, self.decoder.taxonomy, self.poisonous, cfg.backoff)
                unknown_answer(record, float(answers["unknown"][j]), self.unknown[1], cfg.backoff)
                poison_answer(record, answers, j, cfg.poison_warning)
                self.on_result(record)
        self.bar.update(len(bad))


def unanswered_finds(inputs, answered: set[str], unreadable: list[Path], on_result) -> None:
    """A record for each find none of whose images could be read: it gets no answer, and says so."""
    finds: dict[str, list[Path]] = {}
    for path in unreadable:
        finds.setdefault(find_of(path, inputs), []).append(path)
    for find, files in finds.items():
        if find not in answered:
            on_result({"path": printable(Path(find)), "n_images": 0, "images": [],
                       "unreadable": [printable(p) for p in files],
                       "error": f"no answer: none of its {len(files)} image(s) could be read"})


def metadata_priors(cfg: IdentifyConfig, loaded: LoadedModel):
    """``(Priors, (1, n_fields) codes)`` of ``--priors`` and ``--metadata``, or None without ``--priors``."""
    from amanita.priors import parse_metadata, resolve_priors
    given = parse_metadata(cfg.metadata)
    priors = resolve_priors(cfg, loaded.taxonomy, loaded.info)
    if priors is None:
        if given:
            raise UserError("--metadata needs --priors (a file from compute_metadata_priors.py)")
        return None
    if not given:
        raise UserError("--priors needs --metadata FIELD=VALUE ... (where and when the find grew)")
    unused = sorted(set(given) - set(priors.fields))
    if unused:
        print(f"warning: --metadata {', '.join(unused)}: not among the prior fields ({', '.join(priors.fields)})",
              file=sys.stderr)
    codes = priors.codes(given)
    unseen = [f"{f}={given[f]!r}" for j, f in enumerate(priors.fields) if f in given and codes[0, j] < 0]
    if unseen:
        print(f"warning: --metadata {', '.join(unseen)}: never seen in training, so it changes nothing", file=sys.stderr)
    return priors, codes


def identify_finds(cfg: IdentifyConfig, answers: ImageAnswers, pooler, finds: list[str], on_result) -> set[str]:
    """One record per find with a readable image, from its images' pooled log-probabilities (--combine),
    in the order of the finds' first readable images; returns the finds answered."""
    decoder, unknown, readable = answers.decoder, answers.unknown, answers.readable
    logp, count, extra = pooler.result()
    names = [finds[i] for i in pooler.first]  # observation j's find
    first_readable: dict[str, int] = {}
    for i in np.flatnonzero(readable):
        first_readable.setdefault(finds[i], int(i))
    order = sorted((j for j in range(len(names)) if count[j] > 0), key=lambda j: first_readable[names[j]])
    if not order:
        return set()
    keep = torch.as_tensor(order, device=count.device)
    pooled = batch_answers(decoder, {k: v[keep] for k, v in logp.items()}, extra["energy"][keep], cfg.top_k, unknown[0])
    kept = [(p, f) for p, f, ok in zip(answers.dataset.paths, finds, readable) if ok]
    for n, j in enumerate(order):
        record = describe(Path(names[j]), pooled, n, decoder.taxonomy, answers.poisonous, cfg.backoff)
        record["n_images"] = int(count[j])
        record["images"] = [printable(p) for p, f in kept if f == names[j]]
        unknown_answer(record, float(pooled["unknown"][n]), unknown[1], cfg.backoff)
        poison_answer(record, pooled, n, cfg.poison_warning)
        on_result(record)
    return {names[j] for j in order}


# ---------------------------------------------------------------------- output
def format_human(record: dict, top_k: int, backoff: float) -> str:
    """The record as a few aligned lines for a person, control characters escaped (:func:`terminal_safe`)."""
    record = _safe_names(record)
    if "error" in record:
        return f"{record['path']}  (one find, no readable image): {record['error']}"
    width = max(len(step["name"]) for step in record["lineage"])
    lines = [record["path"] + (f"  (one find, {record['n_images']} images)" if "n_images" in record else "")]
    lines += [f"  {s['rank']:<8} {s['name']:<{width}}  {s['confidence']:.3f}" for s in record["lineage"]]
    b = record["backoff"]
    lines.append(f"  confident down to {b['rank']}: {b['name']} ({b['confidence']:.2f})" if b else
                 f"  not confident at any rank (no confidence reaches {backoff:.2f})")
    if record.get("unknown_species"):
        lines.append(f"  ⚑ {record['answer']}: unknown-species score {record['unknown_score']:.3f} is above "
                     "the threshold, so no species is named")
    lines.append(f"  top-{top_k} species:")
    names = [t["species"] if t["scientificName"] == t["species"] else f"{t['species']} (as {t['scientificName']})"
             for t in record["topk"]]
    name_width = max(len(n) for n in names)
    for n, (name, t) in enumerate(zip(names, record["topk"]), 1):
        mark = "  ☠ poisonous" if t["poisonous"] else ""
        lines.append(f"  {n:>3}. {name:<{name_width}}  {t['probability']:.3f}{mark}")
    poisonous = sorted({t["species"] for t in record["topk"] if t["poisonous"]})
    if poisonous:
        lines.append(f"  ⚠ POISONOUS: {', '.join(poisonous)} {'is' if len(poisonous) == 1 else 'are'} "
                     f"among the top-{top_k} — do not eat")
    if "poisonous_probability" in record:
        lines.append(f"  probability that the find is poisonous: {record['poisonous_probability']:.3f}")
        if record["poison_warning"]:
            lines.append(f"  ⚠ poisonous with probability {record['poisonous_probability']:.2f} (above "
                         f"--poison-warning), whatever the top species is — do not eat")
    return "\n".join(lines)


def _safe_names(record: dict) -> dict:
    """A copy of ``record`` whose path, names and answer are :func:`terminal_safe`."""
    out = dict(record, path=terminal_safe(record["path"]))
    out["lineage"] = [dict(s, name=terminal_safe(s["name"])) for s in record.get("lineage", [])]
    out["topk"] = [dict(t, species=terminal_safe(t["species"]), scientificName=terminal_safe(t["scientificName"]))
                   for t in record.get("topk", [])]
    if "error" in record:  # a find with no readable image
        out["error"] = terminal_safe(record["error"])
    if record.get("backoff"):
        out["backoff"] = dict(record["backoff"], name=terminal_safe(record["backoff"]["name"]))
    if "answer" in record:
        out["answer"] = terminal_safe(record["answer"])
    return out


def identify(cfg: IdentifyConfig) -> int:
    """test.py: print a record per image (or a JSON line); returns the exit code (1: some image failed)."""
    if cfg.submission:  # before any work: never onto an input, and into a folder that takes a file
        check_output_file(cfg.submission, "--submission", {"--checkpoint": cfg.checkpoint,
                          "--test-path": cfg.test_path, "--mappings": cfg.mappings})
    # first, so a bad checkpoint is exit code 2 whatever the images
    loaded = load_model(cfg.checkpoint, cfg.device, cfg.mappings, use_ema=not cfg.no_ema)
    info = loaded.info
    kind = {"multitask": "multi-task", "single": "single-head"}.get(info["kind"], info["kind"])
    print(f"{info['path']}: {kind} model, epoch {info['epoch']}, update {info['step']}"
          f"{', EMA weights' if info['ema'] else ''}; decode {cfg.decode}, tta {cfg.tta}, "
          f"{'calibrated' if info.get('temperatures') and not cfg.no_temperatures else 'uncalibrated'} confidences"
          f"{f'; taxonomy and poisonous flags from --mappings {cfg.mappings}' if cfg.mappings else ''}",
          file=sys.stderr)
    rule = unknown_rule(cfg, info)  # before any image: a stored threshold that does not apply is refused
    if cfg.submission:
        from amanita.submission import submit
        return submit(cfg, loaded, rule)
    paths, errors = expand_inputs(cfg.inputs)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    failed = len(errors)

    def on_result(record: dict) -> None:
        print(json.dumps(record, ensure_ascii=False) if cfg.json else
              format_human(record, cfg.top_k, cfg.backoff) + "\n", flush=True)

    def on_error(path: Path, reason: str, bar) -> None:
        nonlocal failed
        failed += 1
        bar.write(f"error: {terminal_safe(printable(path))}: {reason}", file=sys.stderr)

    if paths:
        identify_files(cfg, loaded, paths, on_result, on_error)
    return 1 if failed else 0
