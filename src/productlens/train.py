"""The training recipe: prepared dataset -> processor -> a VLM of any family (+ LoRA / DoRA / QLoRA, or full) -> HF
Trainer -> adapter and/or model folder. In: a `RunConfig`. Out: RUN_DIR with checkpoints, config.yaml, run_info.json,
adapter/ (PEFT) and model/ (full fine-tuning, or `--merge`, in the family's export layout). What differs between
families (prompts, labels, parts, LoRA targets, QLoRA skips, cost knobs) comes from `productlens.families`.

    productlens train --config configs/phi3v-lora.yaml --data data/prepared --out runs/lora
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from productlens.collate import SeededLengthGroupedSampler
from productlens.config import FinetuneConfig, LoraConfig, RunConfig, save_config
from productlens.families import Family, checkpoint_family, family_for
from productlens.families.collate import FamilyCollator, example_lengths
from productlens.files import write_atomic
from productlens.task.metrics import higher_is_better
from productlens.task.prompts import AnswerTemplate
from productlens.tracking import GenerationEvalCallback, console

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "productlens")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run put things, and how it ran."""

    output_dir: Path
    adapter_dir: Path | None  # PEFT methods: the adapter (+ processor)
    model_dir: Path | None  # full fine-tuning, or a merged adapter: the whole model (+ processor)
    global_step: int
    world_size: int
    total_batch_size: int  # examples per optimizer step, over all processes and accumulation steps
    metrics: dict[str, float]
    best_checkpoint: str | None


# ---- parts of the model -----------------------------------------------------------------------------------


def family_of(config: RunConfig) -> Family:
    """The base checkpoint's family: `model.family` if set, else its config.json's model_type."""
    return checkpoint_family(config.model.path, config.model.family)


def set_trainable(model: torch.nn.Module, finetune: FinetuneConfig, family: Family) -> None:
    """Full fine-tuning: train every part not frozen by the config (never parameters that reach no loss)."""
    frozen = {"vision": finetune.freeze_vision, "projection": finetune.freeze_projection}
    frozen["language"] = finetune.freeze_language
    unused = family.unused_parameters(model)
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen[family.part_of(name)] and name not in unused)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("every part is frozen (finetune.freeze_*); unfreeze at least one to train")


def lora_settings(lora: LoraConfig, finetune: FinetuneConfig, family: Family, model: torch.nn.Module) -> Any:
    """The PEFT LoraConfig: adapters on the unfrozen parts; the projection trained whole unless adapted."""
    from peft import LoraConfig as PeftLoraConfig

    patterns = []
    if not finetune.freeze_language:
        patterns.append(family.lora_target_modules(lora.targets))
    if not finetune.freeze_vision:
        patterns.append(family.vision_lora_modules(model, lora.vision_targets))
    train_projection = not finetune.freeze_projection
    if train_projection and lora.projection_targets:
        linears = [
            re.escape(name)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and family.part_of(f"{name}.") == "projection"
        ]
        if not linears:
            raise ValueError(
                f"the {family.name} projector has no linear layers to adapt; set lora.projection_targets=false "
                "(the projector is then trained whole)"
            )
        patterns.append("|".join(linears))
    if not patterns:
        raise ValueError(
            "no LoRA targets: the language model, the vision tower and the projection are all frozen or not "
            "adapted; unfreeze a part (finetune.freeze_*) or set lora.projection_targets=true"
        )
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="|".join(f"(?:{p})" for p in patterns),
        modules_to_save=_whole_modules(model, family.projection_modules) or None
        if train_projection and not lora.projection_targets
        else None,
        use_dora=finetune.method == "dora",
        task_type="CAUSAL_LM",
    )


def _whole_modules(model: torch.nn.Module, endings: tuple[str, ...]) -> list[str]:
    """Module names ending in `endings`, a module list (e.g. Qwen3-VL's deepstack mergers) as its items:
    PEFT's modules_to_save wraps modules that are called, which a ModuleList is not."""
    out = []
    for name, module in model.named_modules():
        if name.endswith(endings):
            if isinstance(module, torch.nn.ModuleList):
                out += [f"{name}.{k}" for k in range(len(module))]
            else:
                out.append(name)
    return out


def quantization_settings(compute_dtype: torch.dtype, family: Family) -> Any:
    """QLoRA: `bnb_config`, after checking that bitsandbytes and a CUDA GPU are there."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("QLoRA needs bitsandbytes: pip install 'productlens[qlora]' (on a CUDA machine)")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "QLoRA needs a CUDA GPU (bitsandbytes 4-bit); use finetune.method=lora on this machine"
        )
    return bnb_config(compute_dtype, family)


def bnb_config(compute_dtype: torch.dtype, family: Family) -> Any:
    """4-bit NF4 for the decoder's Linear layers; the vision tower, projector and lm_head are not quantised
    (`family.quantization_skip_modules()`: module names from the model's root, as transformers 5 matches them)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=family.quantization_skip_modules(),
    )


def load_model(config: RunConfig, args: TrainingArguments, family: Family | None = None) -> torch.nn.Module:
    """The base checkpoint, wrapped for the configured method (PEFT adapters, or trainable parts for full)."""
    family = family or family_of(config)
    finetune = config.finetune
    kwargs: dict[str, Any] = {"dtype": DTYPES[config.model.dtype]}
    if config.model.attn_implementation:
        kwargs["attn_implementation"] = config.model.attn_implementation
    if finetune.method == "qlora":
        compute = torch.bfloat16 if args.bf16 else torch.float16
        kwargs["quantization_config"] = quantization_settings(compute, family)
        kwargs["device_map"] = {"": args.device}
        kwargs["dtype"] = compute
    model = family.load_model(config.model.path, **kwargs)
    # transformers 5.24 under DeepSpeed ZeRO-3 keeps every key conversion it tried, not only those it used, so
    # saving would add e.g. CLIPVisionModel's "vision_model." prefix a second time: keep the used ones, as it
    # does without DeepSpeed
    if getattr(model, "_weight_conversions", None):
        model._weight_conversions = [c for c in model._weight_conversions if c.was_used()]
    if finetune.method == "full":
        set_trainable(model, finetune, family)
        return keep_master_weights(model, args)

    from peft import get_peft_model

    # QLoRA: no `prepare_model_for_kbit_training`, which would upcast every unquantised weight (vision tower,
    # projector, embeddings, norms, lm_head) to float32; frozen weights stay in the load dtype, trainable
    # ones get float32 master weights below, as for LoRA, and compute runs under bf16/fp16 autocast.
    for param in model.parameters():
        param.requires_grad_(False)
    model = get_peft_model(model, lora_settings(config.lora, finetune, family, model))
    if not finetune.freeze_projection and family.projection_parameters:
        # bare projector parameters (Phi-3-V's image separators) have no module, so no adapter: trained whole,
        # saved in the adapter's file
        for name, param in model.named_parameters():
            param.requires_grad_(param.requires_grad or name.endswith(family.projection_parameters))
    if args.activation_checkpointing or args.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed layers still need a grad path
    return keep_master_weights(model, args)


def keep_master_weights(model: torch.nn.Module, args: TrainingArguments) -> torch.nn.Module:
    """Mixed precision (training.bf16 / fp16): trainable parameters -> float32 master weights, frozen ones keep
    their load dtype, and the Trainer runs the compute under autocast. Without it a bf16 weight only moves when
    an update exceeds half its spacing (~0.4% of its size): most updates at 1e-5 would be lost."""
    half = (torch.bfloat16, torch.float16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if args.bf16 or args.fp16:
        for param in trainable:
            if param.dtype in half:
                param.data = param.data.float()
    elif any(p.dtype in half for p in trainable):
        console.print(
            "[yellow]training half-precision weights without mixed precision: small updates are lost; set "
            "training.bf16=true (or fp16) to train float32 master weights[/yellow]"
        )
    return model


def save_projection_parameters(
    model: Any, family: Family, folder: str | os.PathLike, state_dict: dict | None = None
) -> None:
    """PEFT saves adapters and modules_to_save only: add trained bare projector parameters (Phi-3-V's image
    separators glb_GN, sub_GN) to the folder's adapter_model.safetensors, under their names in the PeftModel,
    which PEFT loads back as they are (PeftModel.from_pretrained, load_adapter on resume or for the best
    checkpoint)."""
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "adapter_model.safetensors"
    ends = family.projection_parameters
    names = [n for n, p in model.named_parameters() if ends and n.endswith(ends) and p.requires_grad]
    if not names or not path.is_file() or not hasattr(model, "peft_config"):
        return
    values = state_dict if state_dict is not None else dict(model.named_parameters())
    weights = load_file(path)
    weights.update({n: values[n].detach().cpu().contiguous().clone() for n in names})
    save_file(weights, str(path), metadata={"format": "pt"})


# ---- the trainer ------------------------------------------------------------------------------------------


class ProductTrainer(Trainer):
    """HF Trainer plus: a seeded length-grouped sampler, generation metrics inside evaluation (so that
    `metric_for_best_model` can name them), and per-part learning rates (vision tower, projection)."""

    def __init__(
        self,
        *args: Any,
        family: Family | None = None,
        generation_eval: GenerationEvalCallback | None = None,
        finetune: FinetuneConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.family = family or family_for(self.model.config)  # default: the model's own
        self.generation_eval = generation_eval
        self.finetune = finetune or FinetuneConfig()
        if generation_eval is not None:
            self.add_callback(generation_eval)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        column = self.args.length_column_name
        if self.args.train_sampling_strategy == "group_by_length" and column in dataset.column_names:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            size = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return SeededLengthGroupedSampler(size, list(dataset[column]), seed)
        return super()._get_train_sampler(train_dataset)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_projection_parameters(
                self.accelerator.unwrap_model(self.model),
                self.family,
                output_dir or self.args.output_dir,
                state_dict,
            )

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        if self.generation_eval is not None and description == "Evaluation":
            scores = self.generation_eval.run(self.model, self.processing_class, self.family)
            output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in scores.items()})
        return output

    def create_optimizer(self, model=None):
        finetune = self.finetune
        if self.optimizer is not None or (
            finetune.vision_learning_rate is None and finetune.projection_learning_rate is None
        ):
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        base = self.args.learning_rate
        rates = {
            "vision": finetune.vision_learning_rate or base,
            "projection": finetune.projection_learning_rate or base,
            "language": base,
        }
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((self.family.part_of(name), name in decay), []).append(param)
        param_groups = [
            {"params": params, "lr": rates[part], "weight_decay": self.args.weight_decay if decays else 0.0}
            for (part, decays), params in groups.items()
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer


class _EpochSeed(TrainerCallback):
    """Tells the sampler which epoch starts (also after a resume, where the loader wrappers may not)."""

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = _find_sampler(kwargs.get("train_dataloader"))
        if sampler is not None:
            sampler.set_epoch(int(state.epoch or 0))


def _find_sampler(node: Any, depth: int = 0) -> SeededLengthGroupedSampler | None:
    """Our sampler inside the (accelerate-wrapped, possibly batch-skipping) training data loader."""
    if isinstance(node, SeededLengthGroupedSampler):
        return node
    if node is None or depth > 6:
        return None
    for attr in ("batch_sampler", "sampler"):
        found = _find_sampler(getattr(node, attr, None), depth + 1)
        if found is not None:
            return found
    return None


# ---- the run ----------------------------------------------------------------------------------------------


def training_arguments(config: RunConfig) -> TrainingArguments:
    """config.training -> TrainingArguments (run name defaulting to the output folder's name)."""
    values = dict(config.training)
    values.setdefault("run_name", config.wandb.name or Path(values["output_dir"]).name)
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not torch.cuda.is_available():
        # accelerate (1.15) selects FSDP only on GPUs; on CPUs it would silently train plain DDP instead
        raise RuntimeError(
            "FSDP (configs/accelerate/fsdp.yaml) needs GPUs: accelerate does not run FSDP on the CPU; "
            "use configs/accelerate/ddp.yaml, a DeepSpeed config or torchrun here"
        )
    metric = values.get("metric_for_best_model")
    if metric and values.get("greater_is_better") is None:
        # transformers would maximise any name not ending in "loss", e.g. eval_price_median_ape
        values["greater_is_better"] = higher_is_better(metric)
        if values["greater_is_better"] is None:
            raise ValueError(
                f"training.metric_for_best_model={metric} is not a metric this project knows the direction of; "
                "set training.greater_is_better=true or false"
            )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # several processes (torchrun) on a machine without a GPU: transformers only goes data-parallel
        # (gloo) when told that the CPU is the device
        values.setdefault("use_cpu", True)
    return TrainingArguments(**values)


def latest_checkpoint(output_dir: Path) -> str:
    """The newest complete checkpoint (one with trainer_state.json) in output_dir, or a clear error."""
    found = sorted(
        (p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for path in found:
        if (path / "trainer_state.json").is_file():
            return str(path)
        console.print(f"[yellow]skipping {path.name}: incomplete (the run stopped while saving it)[/yellow]")
    raise FileNotFoundError(
        f"no complete checkpoint in {output_dir}; start without --resume (checkpoints are written every "
        "training.save_steps steps)"
    )


def run_info() -> dict[str, Any]:
    """The git commit of the checkout (if any) and the versions of the packages a run depends on."""
    here = Path(__file__).resolve().parent
    info: dict[str, Any] = {"python": sys.version.split()[0], "command": sys.argv}
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain"], capture_output=True, text=True
        )
        info["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
        info["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except OSError:
        info["git_commit"] = info["git_dirty"] = None
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info["packages"] = versions
    return info


def write_run_files(config: RunConfig, output_dir: Path) -> None:
    """RUN_DIR/config.yaml (the resolved config) and RUN_DIR/run_info.json (git commit, package versions)."""
    save_config(config, output_dir / "config.yaml")
    write_atomic(output_dir / "run_info.json", json.dumps(run_info(), indent=2) + "\n")


def template_of(config: RunConfig) -> AnswerTemplate:
    """The task's question and answer fields (the reference recipe's by default)."""
    return AnswerTemplate.from_dict(config.task) if config.task else AnswerTemplate()


def load_processor(config: RunConfig, family: Family | None = None) -> Any:
    """The checkpoint's processor, with the family's cost knobs overridden as the config sets them."""
    family = family or family_of(config)
    return family.load_processor(config.model.path, **config.model.cost_settings())


def _datasets(
    config: RunConfig, family: Family, processor: Any, template: AnswerTemplate, args: TrainingArguments
):
    from productlens.catalog.prepare import load_prepared

    data = load_prepared(config.data.path)
    train = data["train"]
    if config.data.train_limit is not None:
        train = train.select(range(min(config.data.train_limit, len(train))))
    evaluation = data["validation"] if "validation" in data and len(data["validation"]) else None
    if evaluation is not None and config.data.eval_limit is not None:
        evaluation = evaluation.select(range(min(config.data.eval_limit, len(evaluation))))
    if evaluation is None and args.eval_strategy != "no":
        raise ValueError(f"{config.data.path} has no validation split; set training.eval_strategy=no")
    if args.train_sampling_strategy == "group_by_length":
        column = args.length_column_name
        train = train.add_column(column, example_lengths(family, processor, template, train))
        if evaluation is not None:
            evaluation = evaluation.add_column(
                column, example_lengths(family, processor, template, evaluation)
            )
    return data, train, evaluation


def _generation_eval(config: RunConfig, data: Any, evaluation: Any, template: AnswerTemplate, args):
    if config.eval.sample_size == 0 or evaluation is None or args.eval_strategy == "no":
        return None
    sample = data["validation"].select(range(min(config.eval.sample_size, len(data["validation"]))))
    rows = []
    for row in sample:
        row["image"] = row["image"].convert("RGB")  # decoded once, kept in memory for every evaluation
        rows.append(row)
    train_rows = data["train"].select_columns(["title", "category", "price"]).to_list()
    return GenerationEvalCallback(rows, train_rows, template, config.eval, config.wandb.table_rows)


def train(
    config: RunConfig, resume: bool | str = False, callbacks: list[TrainerCallback] | None = None
) -> TrainResult:
    """Run one training job as configured; `resume=True` continues from the newest checkpoint in the run
    folder (same data order, optimiser, scheduler and random state), a path from that checkpoint."""
    from productlens.tracking import finish_wandb, log_model_artifact, start_wandb

    args = training_arguments(config)
    output_dir = Path(args.output_dir)
    checkpoint = None
    if resume:
        checkpoint = resume if isinstance(resume, str) else latest_checkpoint(output_dir)
        console.print(f"resuming from {checkpoint}")
    main_process = args.process_index == 0
    if main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_run_files(config, output_dir)
    tracked = main_process and "wandb" in args.report_to
    if tracked:
        start_wandb(config.wandb, output_dir, config.to_dict())
    try:
        template = template_of(config)
        family = family_of(config)
        processor = load_processor(config, family)
        data, train_set, eval_set = _datasets(config, family, processor, template, args)
        trainer = ProductTrainer(
            model=load_model(config, args, family),
            family=family,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=FamilyCollator(family, processor, template, config.data.max_length),
            processing_class=processor,
            callbacks=[*(callbacks or []), _EpochSeed()],
            generation_eval=_generation_eval(config, data, eval_set, template, args),
            finetune=config.finetune,
        )
        output = trainer.train(resume_from_checkpoint=checkpoint)
        adapter_dir, model_dir = save_final(trainer, config, processor, output_dir)
        if tracked and config.wandb.log_model:
            final = model_dir or adapter_dir
            log_model_artifact(final, final.name, {"global_step": trainer.state.global_step})
    finally:
        if tracked:
            finish_wandb()
    return TrainResult(
        output_dir=output_dir,
        adapter_dir=adapter_dir,
        model_dir=model_dir,
        global_step=trainer.state.global_step,
        world_size=args.world_size,
        total_batch_size=args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
        metrics=dict(output.metrics),
        best_checkpoint=trainer.state.best_model_checkpoint,
    )


def train_from_options(
    preset: str | None,
    overrides: list[str],
    data: str | None = None,
    model: str | None = None,
    out: str | None = None,
    merge: bool = False,
    resume: bool = False,
) -> TrainResult:
    """The `productlens train` options -> a resolved RunConfig -> `train`. With --resume and no --config,
    the run folder's own config.yaml is used, so a killed run continues exactly as it was set up."""
    from productlens.config import load_config

    given = [f"data.path={data}"] * bool(data) + [f"model.path={model}"] * bool(model)
    given += [f"training.output_dir={out}"] * bool(out) + ["finetune.merge=true"] * merge
    if preset is None and resume and out and (Path(out) / "config.yaml").is_file():
        preset = str(Path(out) / "config.yaml")
    config = load_config(preset, [*given, *overrides])
    result = train(config, resume=resume)
    console.print(
        f"trained {result.global_step} steps ({result.world_size} process(es), {result.total_batch_size} "
        f"examples per step) -> {result.output_dir}"
        + (f"; adapter: {result.adapter_dir}" if result.adapter_dir else "")
        + (f"; model: {result.model_dir}" if result.model_dir else "")
    )
    return result


def end_distributed() -> None:
    """End a finished rank of a multi-process run (accelerate launch, torchrun) once every rank is done: streams
    flushed, exit status 0, no interpreter teardown. Left to the teardown, torch / DeepSpeed's native threads
    aborted a finished ZeRO-3 rank now and then (SIGABRT, 'terminate called without an active exception'), even
    after destroy_process_group, and the launcher reported a failed run. A no-op in a single process. Call it
    last: it does not return."""
    import logging

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def save_final(
    trainer: Trainer, config: RunConfig, processor: Any, output_dir: Path
) -> tuple[Path | None, Path | None]:
    """-> (adapter_dir, model_dir). PEFT: RUN_DIR/adapter, plus RUN_DIR/model merged when finetune.merge;
    full: RUN_DIR/model. Each folder also holds the processor, so it loads on its own."""
    if config.finetune.method == "full":
        model_dir = output_dir / "model"
        trainer.save_model(str(model_dir))
        if trainer.args.should_save:
            processor.save_pretrained(model_dir)
        return None, model_dir
    adapter_dir = output_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    if trainer.args.should_save:
        processor.save_pretrained(adapter_dir)
    if not config.finetune.merge:
        return adapter_dir, None
    model_dir = output_dir / "model"
    if trainer.args.should_save:
        from productlens.export import export

        dtype = None if config.model.dtype == "auto" else config.model.dtype
        # `productlens export`: merged weights in the family's export layout (Phi-3-V: the official one)
        export(output_dir, model_dir, dtype=dtype, overwrite=True)
    trainer.accelerator.wait_for_everyone()
    return adapter_dir, model_dir
