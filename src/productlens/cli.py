"""The `productlens` command line: one subcommand per pipeline stage, in the order data flows.

    productlens synth -> prepare -> train -> evaluate -> predict -> serve   (or: productlens quickstart)

Each command is a thin shell over a function in the module that owns the stage; heavy imports happen
inside the command so that `productlens --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Teach Phi-3-Vision to read product photos: title, category and price.\n\n"
    "Pipeline: synth -> prepare -> train -> evaluate -> predict -> serve. "
    "Example: productlens quickstart",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)


# ---- synth ------------------------------------------------------------------------------------------------
@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write catalog.parquet, catalog.csv and images/ into.")],
    rows: Annotated[int, typer.Option(min=1, help="Catalog rows (the reference has 3,040).")] = 3040,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same catalog and photos.")] = 0,
    brand: Annotated[str, typer.Option(help="Fictional brand name (brand, website and URLs).")] = "NORTHGATE",
    image_base_url: Annotated[
        str | None, typer.Option(help="Write imageurl as URL/images/CODE.jpg (e.g. http://127.0.0.1:8000).")
    ] = None,
    photo_size: Annotated[
        int | None, typer.Option(help="Longest photo side in px (default: catalog sizes, up to 1200).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Processes drawing photos (default: all).")] = None,
) -> None:
    """Write a synthetic catalog like DBQ/Burberry.Product.prices.United.States, with a drawn photo per product.

    Title, category and price are visible in each photo (silhouette, pattern, material, colour, size).

    Example: productlens synth --rows 3040 --out data/synth --photo-size 224
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from productlens.catalog.synth import write_catalog

    with Progress("drawing photos", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("photos", total=None)
        try:
            folder = write_catalog(
                out,
                rows=rows,
                seed=seed,
                brand=brand,
                image_base_url=image_base_url,
                photo_size=photo_size,
                workers=workers,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    photos = sum(1 for _ in (folder / "images").glob("*.jpg"))
    typer.echo(f"{rows} rows, {photos} photos -> {folder} (catalog.parquet, catalog.csv, images/)")


# ---- prepare ----------------------------------------------------------------------------------------------
ALLOW_HOST_HELP = (
    "Let URLs reach this private host: NAME, NAME:PORT, IP or CIDR such as 10.0.0.0/8 (repeatable). "
    "The only way to reach link-local / cloud metadata addresses."
)
FAMILY_HELP = (
    "Model family (phi3v, qwen2_5_vl, qwen3_vl, smolvlm, gemma3); default: from the checkpoint's config.json."
)


@app.command()
def prepare(
    sources: Annotated[
        list[str],
        typer.Argument(help="Catalog: HF dataset id, .parquet/.csv/.jsonl file or save_to_disk folder."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder (run again with the same one to resume).")],
    merge: Annotated[
        bool, typer.Option("--merge", help="SOURCES are the folders of a --shard run: merge them into --out.")
    ] = False,
    allow_private: Annotated[
        bool, typer.Option("--allow-private", help="Let image URLs reach loopback/private addresses.")
    ] = False,
    concurrency: Annotated[int, typer.Option(help="Images in flight at once.")] = 64,
    max_side: Annotated[
        int | None, typer.Option(help="Shrink images so the longest side is at most this.")
    ] = None,
    shard: Annotated[str | None, typer.Option(help="i/n: take the rows whose index modulo n is i.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split assignment.")] = 0,
    split: Annotated[str, typer.Option(help="train,validation,test ratios.")] = "0.8,0.1,0.1",
    image_col: Annotated[str, typer.Option(help="Column with the image URL, path or bytes.")] = "imageurl",
    title_col: Annotated[str, typer.Option(help="Column with the product title.")] = "title",
    category_col: Annotated[str, typer.Option(help="Column with the category.")] = "category3_code",
    price_col: Annotated[str, typer.Option(help="Column with the price.")] = "full_price",
    id_col: Annotated[str, typer.Option(help="Column with the product id.")] = "product_code",
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help=ALLOW_HOST_HELP)] = None,
    image_root: Annotated[
        list[Path] | None,
        typer.Option(
            "--image-root", help="Folder local image paths may lie in, besides the catalog's (repeatable)."
        ),
    ] = None,
) -> None:
    """Download, verify and split a catalog into a training-ready dataset (resumable, leak-free splits).

    Writes images/, manifest.parquet, catalog.csv, dataset/ and stats.json into --out.

    Example: productlens prepare data/synth/catalog.parquet --out data/prepared --allow-private
    """
    from productlens.catalog import prepare as p
    from productlens.catalog.schema import ColumnMap

    try:
        ratios = tuple(float(x) for x in split.split(","))
    except ValueError:
        raise typer.BadParameter(f"--split {split!r}: write three ratios like 0.8,0.1,0.1") from None
    try:
        if merge:
            result = p.merge_prepared(sources, out, splits=ratios, seed=seed)
        else:
            if len(sources) != 1:
                raise typer.BadParameter("give one catalog (or --merge with the shard folders)")
            result = p.prepare_catalog(
                sources[0],
                out,
                columns=ColumnMap(image_col, title_col, category_col, price_col, id_col),
                splits=ratios,
                seed=seed,
                shard=p.parse_shard(shard) if shard else None,
                allow_private=allow_private,
                concurrency=concurrency,
                max_side=max_side,
                allow_hosts=allow_host or (),
                image_roots=image_root or (),
            )
    except (p.PrepareError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(result.summary())


@app.command("serve-images")
def serve_images(
    folder: Annotated[Path, typer.Argument(help="Folder to serve.")],
    latency: Annotated[float, typer.Option(help="Seconds added to every request.")] = 0.0,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 0,
) -> None:
    """Serve a folder of images on 127.0.0.1 (for trying `prepare` and for benchmarks); prints its URL.

    Example: productlens serve-images data/synth --latency 0.05
    """
    from productlens.catalog.server import serve

    serve(folder, latency=latency, port=port)


# ---- train ------------------------------------------------------------------------------------------------
@app.command()
def train(
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Preset YAML, or a name from configs/ (e.g. phi3v-lora)."),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Prepared dataset folder (`productlens prepare --out`).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Base model: a folder or hub id.")] = None,
    out: Annotated[
        str | None, typer.Option(help="Run folder: checkpoints, config.yaml, adapter/, model/.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any setting: section.key=value (repeatable), e.g. lora.r=8."),
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="Also save the adapter merged into the base as model/.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out (same data order).")
    ] = False,
    family: Annotated[str | None, typer.Option(help=FAMILY_HELP)] = None,
) -> None:
    """Fine-tune a VLM (Phi-3-Vision by default) on a prepared catalog with the HF Trainer: LoRA, DoRA, QLoRA or full.

    The `training:` section of the preset goes to transformers.TrainingArguments as it is. Several GPUs:
    `accelerate launch --config_file configs/accelerate/ddp.yaml -m productlens train ...`.

    Example: productlens train --config configs/phi3v-lora.yaml --data data/prepared --out runs/lora --set training.learning_rate=1e-4
    """
    from productlens.train import end_distributed, train_from_options

    try:
        overrides = [*(set_ or []), *([f"model.family={family}"] if family else [])]
        train_from_options(config, overrides, data=data, model=model, out=out, merge=merge, resume=resume)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    end_distributed()  # several processes: every rank done, this one ends here


# ---- export -----------------------------------------------------------------------------------------------
@app.command()
def export(
    run: Annotated[
        Path | None, typer.Argument(help="Run folder (adapter/ or model/), adapter folder or model folder.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder to write the servable model into.")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32, bfloat16 or float16 (default: the base's dtype).")
    ] = None,
    num_crops: Annotated[
        int | None, typer.Option(min=1, help="Phi-3-V: num_crops to record (default: the training value).")
    ] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest safetensors shard, e.g. 5GB.")] = "5GB",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
    check: Annotated[
        Path | None, typer.Option("--check", help="Only validate this folder against its family's layout.")
    ] = None,
) -> None:
    """Write a fine-tuned run as one servable folder (adapters merged): Phi-3-Vision in its official layout
    (official config.json, the base's tokenizer and processor files; vLLM with --trust-remote-code), the native
    families (Qwen2.5-VL, Qwen3-VL, SmolVLM, Gemma 3) in their own transformers layout with the run's processor
    (`vllm serve DIR`, no remote code). The family comes from the base's config.json or the run's model.family.

    Exit status of --check: 0 when every rule holds, 1 otherwise (each broken rule is printed).

    Example: productlens export runs/lora --out exports/lora; productlens export --check exports/lora
    """
    from productlens import export as exporting

    if check is None and (run is None or out is None):
        raise typer.BadParameter("give RUN and --out to export, or --check DIR to validate a folder")
    try:
        if check is None:
            folder = exporting.export(
                run, out, dtype=dtype, num_crops=num_crops, max_shard_size=max_shard_size, overwrite=overwrite
            )
            typer.echo(f"exported {run} -> {folder}")
        problems = exporting.check(check or out)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for problem in problems:
        typer.echo(f"FAIL {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: {check or out} follows {exporting.layout(check or out)}")


# ---- evaluate ---------------------------------------------------------------------------------------------
@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder (`productlens prepare --out`).")],
    model: Annotated[
        str | None,
        typer.Option(
            help="Run folder, model folder or hub id to evaluate; with --endpoint: the served name."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to score: test, validation or train.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Output folder (default: MODEL/eval-SPLIT).")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to put on the model.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N products.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Photos per generate call.")] = 8,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Answer length cap (default 96).")] = None,
    nn_baseline: Annotated[
        bool, typer.Option("--nn-baseline", help="Also score copying the nearest training photo's product.")
    ] = False,
    constrain: Annotated[
        bool, typer.Option("--constrain", help="Constrained decoding: training categories, numeric price.")
    ] = False,
    endpoint: Annotated[
        str | None, typer.Option(help="Score the model an OpenAI-compatible server serves: its URL.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="PRODUCTLENS_API_KEY", help="With --endpoint: the server's API key.")
    ] = None,
    family: Annotated[str | None, typer.Option(help=FAMILY_HELP)] = None,
) -> None:
    """Score a model on a split against baselines: predictions.jsonl, metrics.json and report.html.

    Baselines: the training median price, majority category and most common title (and with --nn-baseline
    the nearest training photo). Metrics go to W&B too when a run is active.

    Example: productlens evaluate --model runs/quickstart --data data/prepared --split test --out runs/eval
    """
    from productlens.catalog.prepare import PrepareError
    from productlens.endpoint import EndpointError
    from productlens.evaluate import evaluate as run_evaluate

    try:
        if model is None and endpoint is None:
            raise ValueError("pass --model RUN (a run, model folder or hub id), or --endpoint URL")
        run_evaluate(
            model,
            data,
            split,
            out,
            adapter=adapter,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            constrain=constrain,
            nn_baseline=nn_baseline,
            endpoint=endpoint,
            api_key=api_key,
            family=family,
        )
    except (ValueError, OSError, PrepareError, EndpointError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


# ---- predict ----------------------------------------------------------------------------------------------
@app.command()
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Photo files, folders (recursive) or http(s) URLs.")],
    model: Annotated[
        str | None,
        typer.Option(help="Run folder, model folder or hub id; with --endpoint: the served model's name."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="preds.jsonl or preds.csv (by extension; default: JSONL on stdout).")
    ] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to put on the model.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Photos per generate call.")] = 8,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Answer length cap (default 96).")] = None,
    allow_private: Annotated[
        bool, typer.Option("--allow-private", help="Let URLs reach loopback/private addresses.")
    ] = False,
    constrain: Annotated[
        bool, typer.Option("--constrain", help="Constrained decoding: template labels and a numeric price.")
    ] = False,
    categories_from: Annotated[
        Path | None, typer.Option(help="With --constrain: only the training categories of this folder.")
    ] = None,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help=ALLOW_HOST_HELP)] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="Ask an OpenAI-compatible server (vllm serve, productlens serve): its URL."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="PRODUCTLENS_API_KEY", help="With --endpoint: the server's API key.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="With --endpoint: requests in flight at once.")] = 8,
    family: Annotated[str | None, typer.Option(help=FAMILY_HELP)] = None,
) -> None:
    """Read title, category and price from product photos: files, folders or URLs in, JSONL or CSV out.

    Columns: input, title, category, price, raw_text, failures, seconds, error. A photo that cannot be read
    (missing, not an image, truncated, too large, unsafe URL) gets an `error` and a warning; the others go on.
    Exit status: 0 if at least one photo was read, 1 if none was, 2 for bad arguments.

    With --endpoint the photos go to a server (e.g. `vllm serve` of an export), `--concurrency` at a time,
    retrying 429/5xx answers; the rows are the same.

    Example: productlens predict photos/ https://example.com/bag.jpg --model runs/quickstart --out preds.csv
    """
    from productlens.catalog.prepare import PrepareError, load_prepared
    from productlens.endpoint import EndpointError, RemotePredictor
    from productlens.predict import Constraints, Predictor, predict_inputs

    options: dict = {"batch_size": batch_size}
    if max_new_tokens is not None:
        options["max_new_tokens"] = max_new_tokens
    try:
        if categories_from is not None and not constrain:
            raise ValueError("--categories-from works with --constrain; add --constrain")
        if constrain:
            if categories_from is not None:
                rows = load_prepared(categories_from)["train"].select_columns(["category", "price"]).to_list()
                options["constraints"] = Constraints.from_training(rows)
            else:
                options["constraints"] = Constraints(price=True)
        if endpoint is not None:
            if constrain or adapter is not None:
                raise ValueError("--constrain and --adapter act on a local model; drop them with --endpoint")
            predictor = RemotePredictor(
                endpoint, api_key, model=model, max_new_tokens=max_new_tokens, concurrency=concurrency
            )
        elif model is None:
            raise ValueError("pass --model RUN (a run, model folder or hub id), or --endpoint URL")
        else:
            predictor = Predictor.load(model, adapter=adapter, family=family, **options)
        chunk = max(64, 4 * concurrency)  # photos read ahead: enough to keep --concurrency requests in flight
        summary = predict_inputs(
            predictor, inputs, out, allow_private=allow_private, allow_hosts=allow_host or (), chunk=chunk
        )
    except (ValueError, OSError, PrepareError, EndpointError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    where = f" -> {summary.out}" if summary.out else ""
    skipped = f", {summary.skipped} skipped (not images; reasons in the output)" if summary.skipped else ""
    typer.echo(
        f"{summary.rows} inputs: {summary.succeeded} read, {summary.failed} failed{skipped}{where}", err=True
    )
    if summary.succeeded == 0:
        raise typer.Exit(1)


# ---- serve ------------------------------------------------------------------------------------------------
@app.command()
def serve(
    model: Annotated[str, typer.Option(help="Run folder or model folder to serve.")],
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to put on the model.")] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; beyond loopback, also pass --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind (0: any free port).")] = 8000,
    token: Annotated[
        str | None, typer.Option(envvar="PRODUCTLENS_TOKEN", help="Bearer token /v1/predict requires.")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Photos per model call across requests (default 8; 1: no batching).")
    ] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="Wait for more photos after the first (default 20).")
    ] = None,
    max_image_bytes: Annotated[int | None, typer.Option(help="Bytes per photo (default 10 MiB).")] = None,
    max_request_bytes: Annotated[
        int | None, typer.Option(help="Bytes per request body (default 32 MiB).")
    ] = None,
    max_image_pixels: Annotated[
        int | None, typer.Option(help="Pixels per photo (default 40 million).")
    ] = None,
    max_images: Annotated[int | None, typer.Option(help="Photos per request (default 8).")] = None,
    request_timeout: Annotated[
        float | None, typer.Option(help="Seconds per request before 504 (default 120).")
    ] = None,
    allow_private_urls: Annotated[
        bool,
        typer.Option("--allow-private-urls", help="Let JSON photo URLs reach loopback/private addresses."),
    ] = False,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help=ALLOW_HOST_HELP)] = None,
    family: Annotated[str | None, typer.Option(help=FAMILY_HELP)] = None,
) -> None:
    """Serve the model: a web page to drop photos on (/) and an HTTP API (POST /v1/predict, schema at /openapi.json).

    Example: productlens serve --model runs/quickstart --port 8000
    """
    from productlens.serve.app import ServeSettings
    from productlens.serve.app import serve as run_server

    given = {
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "max_image_bytes": max_image_bytes,
        "max_request_bytes": max_request_bytes,
        "max_image_pixels": max_image_pixels,
        "max_images": max_images,
        "request_timeout_s": request_timeout,
    }
    try:
        settings = ServeSettings(
            **{k: v for k, v in given.items() if v is not None},
            allow_private_urls=allow_private_urls,
            token=token or None,
            allow_hosts=frozenset(allow_host or ()),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_server(model, adapter=adapter, host=host, port=port, settings=settings, family=family)


# ---- quickstart -------------------------------------------------------------------------------------------
@app.command()
def quickstart(
    out: Annotated[
        Path, typer.Option(help="Output folder (a previous quickstart there is replaced).")
    ] = Path("runs/quickstart"),
    config: Annotated[str, typer.Option("--config", "-c", help="Quickstart preset.")] = "quickstart",
    family: Annotated[
        str | None,
        typer.Option(
            help="Model family of the tiny model: phi3v (default), qwen2_5_vl, qwen3_vl, smolvlm, gemma3."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: quickstart.rows=3040, training.max_steps=2000, ..."),
    ] = None,
) -> None:
    """The whole pipeline on the CPU in minutes: synthetic catalog -> prepare -> a tiny model (Phi-3-Vision, or
    --family) trained from scratch -> test-split evaluation, with the targets it must reach printed beside their
    baselines (PASS/FAIL).

    Leaves a run folder: model/ (usable with evaluate, predict and serve), metrics.json and report.html.

    Example: productlens quickstart --out runs/quickstart
    """
    from productlens.quickstart import run_quickstart

    try:
        run_quickstart(out, config, set_ or [], family=family)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
