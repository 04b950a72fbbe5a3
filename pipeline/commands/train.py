"""`itmflow train tern|teran|sgraf-sgr|sgraf-saf`: train a matcher on a region + caption store."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Literal, Optional

import typer


def model_name(value: str) -> str:
    """Check a model name against the registry's names (their torch-free list: a usage error
    comes back before torch is imported)."""
    from trainers.model_names import MODEL_NAMES

    if value not in MODEL_NAMES:
        raise typer.BadParameter(f"{value!r} is not a model; choose one of {', '.join(MODEL_NAMES)} "
                                 "(`itmflow models` describes them)")
    return value


class DatasetPreset(str, Enum):
    """Which paper preset the defaults come from."""

    coco = "coco"
    f30k = "f30k"


def _overrides(config_file: Optional[Path], options: dict[str, Any]) -> dict[str, Any]:
    from itmflow.config import load_yaml

    data = load_yaml(config_file) if config_file is not None else {}
    data.update({k: v for k, v in options.items() if v is not None})
    return data


def _check_inputs(regions: Path, captions: Path, out: Path, *, resume: bool) -> None:
    """What :func:`trainers.training.train` refuses first, checked by the same light functions
    (no torch): the caption store's and the region store's manifests (in train's order), and
    whether --out fits a new run (or, with --resume, holds one to continue)."""
    from stores.captions import read_caption_manifest
    from stores.manifest import load_manifest
    from trainers.runs import check_run_dir

    read_caption_manifest(captions)
    load_manifest(regions)
    check_run_dir(out, resume=resume)


def train_command(
    model: str = typer.Argument(..., callback=model_name, metavar="MODEL",
                                help="Model to train: a name `itmflow models` lists."),
    regions: Path = typer.Option(..., "--regions", help="Region store directory (itmflow extract)."),
    captions: Path = typer.Option(..., "--captions", help="Caption store directory (itmflow tokenize)."),
    out: Path = typer.Option(..., "--out", help="Run directory: config, log, curves, best/ and last/."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file overriding the preset "
                                          "(any TrainConfig key; model sizes under model_config)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where "
                                "its last checkpoint stopped."),
    dataset: Optional[DatasetPreset] = typer.Option(None, "--dataset", help="Paper preset: coco "
                                                    "(default) or f30k."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Number of epochs (preset: paper's)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many iterations."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Base learning rate."),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every N iterations "
                                            "(0: at epoch ends only)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE", help="auto (the "
                                         "default), cpu, cuda, cuda:1, ..."),
    workers: int = typer.Option(1, "--workers", min=1, metavar="N", help="Training processes: N > 1 runs the "
                                "loop as a Ray Train job on N workers, each taking a 1/N slice of "
                                "every batch (same optimisation as 1 process); 1 = in-process."),
    gpus_per_worker: Optional[float] = typer.Option(
        None, "--gpus-per-worker", help="GPUs per Ray Train worker (default: 1 when the cluster "
        "has GPUs and --device is not cpu, else 0)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to run the workers "
                                          "on (host:port of `ray start --head`; default "
                                          "RAY_ADDRESS, else a local Ray)."),
    storage_path: Optional[str] = typer.Option(
        None, "--storage-path", help="Where Ray Train keeps checkpoint copies for restarts "
        "(shared across machines; default OUT/.ray)."),
    max_failures: int = typer.Option(3, "--max-failures", min=0, help="Restart the workers from "
                                     "the last checkpoint at most this many times."),
    loader_workers: Optional[int] = typer.Option(None, "--loader-workers", metavar="N",
                                                 help="DataLoader worker processes per training "
                                                 "process (config key `workers`)."),
    bert: Optional[str] = typer.Option(None, "--bert", help="BERT directory (config.json + "
                                       "model.safetensors + vocab.txt) or hub id for TERN/TERAN "
                                       "(default bert-base-uncased, from the HF cache)."),
    vocab: Optional[Path] = typer.Option(None, "--word-vocab", metavar="JSON", help="SCAN "
                                         "word-vocabulary JSON for SGRAF (sets the vocabulary "
                                         "size; copied into the run)."),
    vocab_old: Optional[Path] = typer.Option(None, "--vocab", hidden=True,
                                             help="Deprecated spelling of --word-vocab."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Log the training loss "
                                            "every N iterations (preset 10)."),
    save_optimizer_state: Optional[bool] = typer.Option(
        None, "--save-optimizer-state/--no-save-optimizer-state", help="Keep Adam's moments in "
        "last/ (2x the weights; needed for an exact --resume). Default: save."),
    keep: Optional[Literal["best", "last", "both"]] = typer.Option(None, "--keep", help="Checkpoints kept: best, last or "
                                       "both (default both)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as one JSON "
                                 "document on stdout (tables go to stderr)."),
) -> None:
    """Train TERN, TERAN or SGRAF with the paper's preset on our stores."""
    from itmflow.errors import ConfigError
    from pipeline.commands._common import people_console, pick, print_json

    # Argument errors first, before torch (seconds) is imported: the model name (its callback),
    # the YAML file, --word-vocab, the Ray options, both stores' manifests and --out / --resume.
    vocab = pick(vocab, vocab_old, "--vocab", "--word-vocab")

    options: dict[str, Any] = {
        "dataset": dataset.value if dataset else None, "epochs": epochs, "max_steps": max_steps,
        "batch_size": batch_size, "lr": lr, "val_every": val_every, "seed": seed,
        "device": device, "workers": loader_workers, "progress": progress, "log_every": log_every,
        "save_optimizer_state": save_optimizer_state, "keep": keep}
    overrides = _overrides(config, options)
    if vocab is not None:
        from pipeline.text.vocab import WordVocab

        if not vocab.is_file():
            raise ConfigError(f"--word-vocab {vocab} does not exist; give the word-vocabulary JSON "
                              "the caption store was tokenized with")
        size = len(WordVocab.load(vocab))
        overrides.setdefault("model_config", {}).setdefault("vocab_size", size)
    if workers <= 1 and (address is not None or gpus_per_worker is not None):
        raise ConfigError("--address and --gpus-per-worker need --workers N with N > 1 (a "
                          "Ray Train job); one worker trains in this process")
    _check_inputs(regions, captions, out, resume=resume)

    from rich.console import Console
    from rich.table import Table

    from trainers.training import train
    from trainers.training.config import build_config

    cfg = build_config(model, overrides=overrides, where=str(config or "options"))
    console = Console(stderr=True)
    if workers > 1:
        from pipeline.extract.cluster import ray_session
        from trainers.training.distributed import DistributedOptions

        options_ = DistributedOptions(workers=workers, gpus_per_worker=gpus_per_worker,
                                      storage_path=storage_path, max_failures=max_failures)
        with ray_session(address):
            summary = train(cfg, regions, captions, out, resume=resume, bert=bert, vocab=vocab,
                            console=console, distributed=options_)
    else:
        summary = train(cfg, regions, captions, out, resume=resume, bert=bert, vocab=vocab,
                        console=console)
    best = summary.get("best") or {}
    if as_json:
        print_json({"run": str(out), "model": cfg.model, **summary})
    if not best:
        typer.echo(f"no validation ran ({summary['steps']} steps; set --val-every or train an "
                   f"epoch to get one); run in {out}", err=as_json)
        return
    table = Table(title=f"{cfg.model}: best validation (step {summary['best_step']})")
    for col in ("direction", "R@1", "R@5", "R@10", "medr"):
        table.add_column(col)
    for direction in ("i2t", "t2i"):
        m = best.get(direction)
        if m:
            table.add_row(direction, f"{m['r1']:.1f}", f"{m['r5']:.1f}", f"{m['r10']:.1f}",
                          f"{m['medr']:.0f}")
    people_console(as_json).print(table)
    typer.echo(f"rsum {best.get('rsum', float('nan')):.1f}; {summary['steps']} steps; run in {out}",
               err=as_json)


def models_command() -> None:
    """List the models `itmflow train` / `evaluate` / `embed` know: inputs, global vectors, presets."""
    from rich.console import Console
    from rich.table import Table

    from trainers.models import MODELS
    from trainers.training.config import DATASETS

    table = Table(title="models")
    for col in ("name", "architecture", "reads", "global vectors (embed)", "presets"):
        table.add_column(col)
    for spec in MODELS.values():
        table.add_row(spec.name, spec.kind, ", ".join(["features", *sorted(spec.needs)]),
                      "yes" if spec.global_vectors else "no", ", ".join(DATASETS))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add `itmflow train` and `itmflow models` to `app`."""
    app.command("train", help="Train TERN / TERAN / SGRAF on a region store and a caption store.")(
        train_command)
    app.command("models")(models_command)
