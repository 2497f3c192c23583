"""The local LoRA training job: ``python -m core.training.worker JOB_DIR [--resume]``.

Supervised fine-tuning with TRL's ``SFTTrainer`` and a PEFT LoRA adapter (QLoRA where
bitsandbytes and a GPU are present), on the GPU when there is one, else the CPU. Each chat
example is split at its last assistant message into a prompt and a completion, formatted by
the tokenizer's own chat template, so the loss falls only on the assistant's answer. The
worker reads ``spec.json`` from its job directory and writes its state, events, metrics,
checkpoints and weights there (``core.training.local``); it never opens the store, and the
parent gives it an environment with no keys and no network fetches.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.training.backends import JobMetric
from core.training.local import CHATML_TEMPLATE, LocalJob, base_model_problem, weights_sha256


class InputProblem(Exception):
    """Bad input the user can fix: the job fails with this sentence."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def training_rows(path: Path) -> list[dict[str, Any]]:
    """Prompt/completion conversations from an OpenAI chat JSONL export: everything up to
    the last assistant message is the prompt, that message the completion."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            messages = json.loads(line).get("messages") or []
            last = max(
                (n for n, m in enumerate(messages) if m.get("role") == "assistant"), default=None
            )
            if last is None or last == 0:
                continue
            clean = [{"role": m["role"], "content": str(m.get("content") or "")} for m in messages]
            rows.append({"prompt": clean[:last], "completion": [clean[last]]})
    return rows


def _load(spec: dict[str, Any]) -> tuple[Any, Any, str, int]:
    """The tokenizer and the (LoRA-ready) base model, the device name and its GPU count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = spec["settings"]
    base = spec["base_model"]
    problem = base_model_problem(base, chat_template=settings["chat_template"])
    if problem:
        raise InputProblem(problem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise InputProblem(f"The tokenizer of '{base}' cannot be loaded: {exc}") from None
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if cuda:
        # bf16 where the GPU has it; else full precision (fp16 weights cannot train unscaled).
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if settings["qlora"]:
            try:
                import bitsandbytes  # noqa: F401
                from transformers import BitsAndBytesConfig
            except ImportError:
                pass
            else:
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=kwargs["dtype"],
                    bnb_4bit_use_double_quant=True,
                )
                kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputProblem(f"'{base}' cannot be loaded as a causal language model: {exc}") from None
    if cuda:
        model = model.to("cuda") if "quantization_config" not in kwargs else model
        return tokenizer, model, torch.cuda.get_device_name(0), torch.cuda.device_count()
    return tokenizer, model, "cpu", 0


def _target_modules(model: Any, wanted: list[str]) -> str | list[str]:
    names = [w.strip() for w in wanted if w.strip()]
    if "all-linear" in names:
        return "all-linear"
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [n for n in names if n not in present]
    if missing:
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if type(module).__name__ == "Linear" and "lm_head" not in name
            }
        )
        raise InputProblem(
            f"The base model has no module named {', '.join(missing)}; its linear layers are "
            f"{', '.join(linear) or 'none'} (or use all-linear)."
        )
    return names


def train(job: LocalJob, *, resume: bool) -> None:
    """Run the job described by the job directory's spec to its end."""
    spec = job.spec()
    settings = spec["settings"]
    rows = training_rows(Path(spec["train_file"]))
    if not rows:
        raise InputProblem("The dataset export has no training rows with an assistant answer.")
    job.add_event(f"Loading {spec['base_model']}.")

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer, model, device, gpus = _load(spec)
    targets = _target_modules(model, settings["target_modules"])
    peft_config = LoraConfig(
        r=settings["lora_rank"],
        lora_alpha=settings["lora_alpha"],
        lora_dropout=settings["lora_dropout"],
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    validation = spec.get("validation_file")
    eval_rows = training_rows(Path(validation)) if validation else []
    max_steps = spec.get("max_steps") or settings.get("max_steps")
    args = SFTConfig(
        output_dir=str(job.checkpoints),
        num_train_epochs=float(settings["epochs"]),
        max_steps=int(max_steps) if max_steps else -1,
        learning_rate=float(settings["learning_rate"]),
        per_device_train_batch_size=int(settings["batch_size"]),
        per_device_eval_batch_size=int(settings["batch_size"]),
        gradient_accumulation_steps=int(settings["gradient_accumulation_steps"]),
        max_length=int(settings["max_seq_length"]),
        save_strategy="steps",
        save_steps=int(settings["save_steps"]),
        save_total_limit=2,
        logging_steps=0.02,  # about fifty points on the loss curve, whatever the length
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=0.1 if eval_rows else None,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        seed=int(settings["seed"]),
        use_cpu=device == "cpu",
        bf16=device != "cpu" and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )

    class Progress(TrainerCallback):  # type: ignore[misc]
        """Metrics and progress into the job directory; a cancel stops at a step boundary."""

        last_write = 0.0

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            logs = logs or {}
            job.add_metric(
                JobMetric(
                    step=int(state.global_step),
                    epoch=logs.get("epoch"),
                    loss=logs.get("loss"),
                    learning_rate=logs.get("learning_rate"),
                    tokens=int(state.num_input_tokens_seen or 0) or None,
                    eval_loss=logs.get("eval_loss"),
                )
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if job.cancel_marker.exists():
                control.should_training_stop = True
            now = time.monotonic()
            if now - self.last_write >= 1.0 or state.global_step == state.max_steps:
                self.last_write = now
                job.update_state(
                    step=int(state.global_step),
                    total_steps=int(state.max_steps),
                    trained_tokens=int(state.num_input_tokens_seen or 0),
                )

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            job.add_event(f"Checkpoint at step {state.global_step}.")

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Progress()],
    )
    checkpoint = job.last_checkpoint() if resume else None
    job.update_state(status="running", device=device, gpus=gpus, total_steps=trainer.args.max_steps)
    job.add_event(
        f"Training on {device} ({len(rows)} examples"
        + (f", {len(eval_rows)} for eval loss" if eval_rows else "")
        + (f"), resuming from {checkpoint.name}." if checkpoint else ").")
    )
    started = time.monotonic()
    before = float(job.state().get("train_seconds") or 0.0)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        job.update_state(train_seconds=before + time.monotonic() - started)
    state = trainer.state
    job.update_state(
        step=int(state.global_step),
        trained_tokens=int(state.num_input_tokens_seen or 0),
    )
    if job.cancel_marker.exists():
        job.update_state(status="cancelled", finished_at=_now())
        job.add_event(f"Cancelled at step {state.global_step}.")
        return
    adapter = job.path / "adapter"
    trainer.save_model(str(adapter))
    weights = adapter
    if settings["merge_adapter"]:
        merged = job.path / "merged"
        trainer.model.merge_and_unload().save_pretrained(str(merged))
        tokenizer.save_pretrained(str(merged))
        weights = merged
    job.update_state(
        status="succeeded",
        finished_at=_now(),
        weights_path=str(weights),
        weights_sha256=weights_sha256(weights),
        model=spec["model_name"],
    )
    job.add_event(f"Done: {state.global_step} steps; weights in {weights.name}/.")


def main(argv: list[str]) -> int:
    """Run one job; the exit status mirrors its end (0 succeeded or cancelled, 1 failed)."""
    job = LocalJob(Path(argv[0]).resolve())
    resume = "--resume" in argv[1:]
    signal.signal(signal.SIGTERM, lambda *_: job.cancel_marker.touch())
    job.update_state(status="running", pid=os.getpid(), started_at=_now(), error=None)
    job.add_event("Resumed." if resume else "Started.")
    try:
        train(job, resume=resume)
    except InputProblem as exc:
        job.update_state(status="failed", error=str(exc), error_kind="input", finished_at=_now())
        job.add_event(str(exc), level="error")
        return 1
    except Exception as exc:  # the job's own log keeps the traceback; the store gets a sentence
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        message = f"Training failed: {type(exc).__name__}" + (f": {first}" if first else "")
        job.update_state(status="failed", error=message, error_kind="crash", finished_at=_now())
        job.add_event(message + f" (traceback in {job.log_path})", level="error")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
