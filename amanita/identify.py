"""Name the fungus in photos: the package side of ``test.py`` (its flags: :func:`amanita.cli.build_identify_parser`).

For each image: the predicted class and confidence at each of the six ranks, the top-k species
(accepted names; a synonym's own scientificName beside it), the finest rank whose confidence
reaches ``--backoff``, and whether any top-k species is poisonous. Predictions come from
:class:`amanita.engine.BatchPredictor`, the same step as validation.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from amanita.calibration import lineage_confidence
from amanita.checkpoint import load_for_eval
from amanita.data import IMAGE_ERRORS, DeviceLoader, create_transforms, make_loader, read_image
from amanita.decisions import costs_from_args, make_decoder, poison_probability, poisonous_leaves
from amanita.distributed import resolve_device
from amanita.engine import BatchPredictor, Readout
from amanita.io import UserError, check_output_file
from amanita.observations import pool_observations
from amanita.openset import is_unknown, readout_conditions, score_column, unknown_scores
from amanita.openset import unknown_rule as openset_rule
from amanita.taxonomy import LEAF, RANKS, Taxonomy, use_mappings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


# ---------------------------------------------------------------------- inputs
def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Image paths (folders expanded, sorted, recursive) and error lines for missing inputs.

    Each file once, at its first appearance (a folder inside another folder given, a file named
    twice), so no image is predicted or pooled twice."""
    paths, errors, seen = [], [], set()
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{path}: no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        elif path.is_file():
            found = [path]  # named explicitly: tried whatever its extension
        else:
            found = []
            errors.append(f"{path}: no such file or folder")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                paths.append(f)
    return paths, errors


class ImageFiles(Dataset):
    """A map-style dataset: ``(uint8 tensor, error)``; an unreadable file gives zeros and its reason."""

    def __init__(self, paths: list[Path], transform, shape: tuple[int, int, int]):
        self.paths, self.transform, self.shape = paths, transform, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(read_image(self.paths[i])), ""
        except Image.UnidentifiedImageError:
            return torch.zeros(self.shape, dtype=torch.uint8), "not an image (unrecognised file format)"
        except IMAGE_ERRORS as e:
            return torch.zeros(self.shape, dtype=torch.uint8), f"not an image ({type(e).__name__}: {str(e).splitlines()[0]})"


# ---------------------------------------------------------------------- model
def load_model(args):
    """``(model, taxonomy, data_config, info, device)``; --mappings must hold the checkpoint's tree."""
    device = resolve_device(args.device)
    model, tax, data_config, info = load_for_eval(args.checkpoint, device, use_ema=not args.no_ema)
    if args.mappings is not None:
        tax = use_mappings(tax, args.mappings, args.checkpoint)
    return model, tax, data_config, info, device


# ---------------------------------------------------------------------- inference
def identify_batch(predictor: BatchPredictor, images: torch.Tensor, top_k: int, score: str = "msp",
                   priors=None) -> dict:
    """Per-rank predicted index, lineage and own confidence, the top-k leaves with their probabilities
    and the unknown-species ``score``.

    Returns numpy arrays: ``pred[rank]``, ``conf[rank]`` (lineage) and ``head_conf[rank]`` (B,),
    ``top_leaf`` and ``top_p`` (B, k), ``unknown`` (B,); and the tensors ``logp`` and ``energy``.
    """
    logp, energy = predictor.log_probs(images)
    if priors is not None:  # (Priors, (1, n_fields) codes of --metadata): the same values for every photo
        logp = priors[0].apply(logp, priors[1].expand(len(energy), -1))
    return summarise(predictor, logp, energy, top_k, score)


def summarise(predictor: BatchPredictor, logp: dict, energy: torch.Tensor, top_k: int, score: str) -> dict:
    """:func:`identify_batch`'s dict from log-probabilities (of images, or of pooled finds)."""
    preds = predictor.decoder.decode(logp)
    lineage = lineage_confidence(logp[LEAF], preds, predictor.decoder.ancestors)
    top = logp[LEAF].topk(min(top_k, logp[LEAF].shape[1]), dim=1)
    return {"pred": {r: preds[r].cpu().numpy() for r in RANKS},
            "conf": {r: lineage[r].cpu().numpy() for r in RANKS},
            "head_conf": {r: logp[r].gather(1, preds[r][:, None]).squeeze(1).exp().cpu().numpy() for r in RANKS},
            "top_leaf": top.indices.cpu().numpy(), "top_p": top.values.exp().cpu().numpy(),
            "unknown": unknown_scores(logp[LEAF], energy)[score_column(score)].cpu().numpy(),
            "poison": poison_probability(logp[LEAF], torch.as_tensor(poisonous_leaves(predictor.decoder.taxonomy),
                                                                     device=logp[LEAF].device)).cpu().numpy(),
            "logp": logp, "energy": energy}


def unknown_rule(args, info: dict) -> tuple[str, float | None]:
    """``(score, threshold)`` of :func:`amanita.openset.unknown_rule` for test.py's flags and the checkpoint
    (threshold None: no verdict); the submission applies the same rule."""
    temperatures = None if args.no_temperatures else info.get("temperatures")
    return openset_rule(info.get("open_set"), args.unknown_score, args.unknown_threshold,
                        readout_conditions(temperatures, args.tta))


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


def identify_files(args, loaded, paths: list[Path], on_result, on_error) -> None:
    """Predict ``paths`` in batches; ``on_result(record)`` per image (per find with --observation),
    ``on_error(path, reason, bar)`` per bad file."""
    model, tax, data_config, info, device = loaded
    temperatures = None if args.no_temperatures else info.get("temperatures")
    predictor = BatchPredictor(model, tax, device, args.decode, args.amp, Readout(args.tta, temperatures))
    predictor.decoder = make_decoder(tax, predictor.device, args.decode, args.decision, costs_from_args(args))
    priors = metadata_priors(args, tax, info)
    poisonous = poisonous_leaves(tax)
    score, threshold = unknown_rule(args, info)
    dataset = ImageFiles(paths, create_transforms(data_config, train=False), tuple(data_config["input_size"]))
    loader = DeviceLoader(make_loader(dataset, args.batch_size, args.workers, device, persistent=False),
                          device, data_config)  # normalised on the device
    folders = any(Path(p).is_dir() for p in args.inputs)
    # disable=None: a bar only on a terminal, so logs and pipes stay clean; always on stderr
    bar = tqdm(total=len(paths), disable=None if folders else True, desc="images", unit="img", file=sys.stderr)
    start, kept, unreadable = 0, [], []
    for images, errors in loader:
        batch = identify_batch(predictor, images, args.top_k, score, priors)
        for i, error in enumerate(errors):
            if error:
                on_error(paths[start + i], error, bar)
                unreadable.append(paths[start + i])
            elif args.observation:
                kept.append((paths[start + i], {k: v[i:i + 1].cpu() for k, v in batch["logp"].items()},
                             batch["energy"][i:i + 1].cpu()))
            else:
                record = describe(paths[start + i], batch, i, tax, poisonous, args.backoff)
                unknown_answer(record, float(batch["unknown"][i]), threshold, args.backoff)
                poison_answer(record, batch, i, args.poison_warning)
                on_result(record)
        start += len(errors)
        bar.update(len(errors))
    bar.close()
    if kept:
        identify_finds(args, predictor, kept, (score, threshold), on_result)
    if args.observation:
        unanswered_finds(args.inputs, kept, unreadable, on_result)


def unanswered_finds(inputs: list[str], kept: list, unreadable: list[Path], on_result) -> None:
    """A record for each find none of whose images could be read: it gets no answer, and says so."""
    answered = {find_of(path, inputs) for path, _, _ in kept}
    finds: dict[str, list[Path]] = {}
    for path in unreadable:
        finds.setdefault(find_of(path, inputs), []).append(path)
    for find, files in finds.items():
        if find not in answered:
            on_result({"path": printable(Path(find)), "n_images": 0, "images": [],
                       "unreadable": [printable(p) for p in files],
                       "error": f"no answer: none of its {len(files)} image(s) could be read"})


def metadata_priors(args, tax: Taxonomy, info: dict):
    """``(Priors, (1, n_fields) codes)`` of ``--priors`` and ``--metadata``, or None without ``--priors``."""
    from amanita.priors import parse_metadata, resolve_priors
    given = parse_metadata(args.metadata)
    priors = resolve_priors(args, tax, info)
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
    return priors, codes.to(resolve_device(args.device))


def identify_finds(args, predictor: BatchPredictor, kept: list, unknown: tuple, on_result) -> None:
    """One record per find from its readable images' ``(path, logp, energy)``, pooled (--combine)."""
    finds = [find_of(path, args.inputs) for path, _, _ in kept]
    logp = {k: torch.cat([lp[k] for _, lp, _ in kept]) for k in kept[0][1]}
    pooled, first, count, extra = pool_observations(logp, finds, args.combine,
                                                    {"energy": torch.cat([e for _, _, e in kept])})
    pooled = {k: v.to(predictor.device) for k, v in pooled.items()}
    batch = summarise(predictor, pooled, extra["energy"].to(predictor.device), args.top_k, unknown[0])
    poisonous = poisonous_leaves(predictor.decoder.taxonomy)
    for j, i in enumerate(first):
        record = describe(Path(finds[i]), batch, j, predictor.decoder.taxonomy, poisonous, args.backoff)
        record["n_images"] = int(count[j])
        record["images"] = [printable(p) for (p, _, _), f in zip(kept, finds) if f == finds[i]]
        unknown_answer(record, float(batch["unknown"][j]), unknown[1], args.backoff)
        poison_answer(record, batch, j, args.poison_warning)
        on_result(record)


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


def identify(args) -> int:
    """test.py: print a record per image (or a JSON line); returns the exit code (1: some image failed)."""
    if args.submission:  # before any work: never onto an input, and into a folder that takes a file
        check_output_file(args.submission, "--submission", {"--checkpoint": args.checkpoint,
                          "--test-path": args.test_path, "--mappings": args.mappings})
    loaded = load_model(args)  # first, so a bad checkpoint is exit code 2 whatever the images
    info = loaded[3]
    kind = {"multitask": "multi-task", "single": "single-head"}.get(info["kind"], info["kind"])
    print(f"{info['path']}: {kind} model, epoch {info['epoch']}, update {info['step']}"
          f"{', EMA weights' if info['ema'] else ''}; decode {args.decode}, tta {args.tta}, "
          f"{'calibrated' if info.get('temperatures') and not args.no_temperatures else 'uncalibrated'} confidences"
          f"{f'; taxonomy and poisonous flags from --mappings {args.mappings}' if args.mappings else ''}",
          file=sys.stderr)
    rule = unknown_rule(args, info)  # before any image: a stored threshold that does not apply is refused
    if args.submission:
        from amanita.submission import submit
        return submit(args, loaded, rule)
    paths, errors = expand_inputs(args.inputs)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    failed = len(errors)

    def on_result(record: dict) -> None:
        print(json.dumps(record, ensure_ascii=False) if args.json else
              format_human(record, args.top_k, args.backoff) + "\n", flush=True)

    def on_error(path: Path, reason: str, bar) -> None:
        nonlocal failed
        failed += 1
        bar.write(f"error: {terminal_safe(printable(path))}: {reason}", file=sys.stderr)

    if paths:
        identify_files(args, loaded, paths, on_result, on_error)
    return 1 if failed else 0
