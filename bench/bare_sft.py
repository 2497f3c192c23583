"""The baseline of bench/train.py: a bare TRL SFTTrainer + PEFT LoRA script, as a user would
write it, with the settings Flywheel's local trainer uses (``python bench/bare_sft.py SPEC``,
where SPEC is the local job's spec.json). It prints the trained tokens on its last line."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    spec = json.loads(Path(spec_path).read_text())
    settings = spec["settings"]
    rows = []
    for line in Path(spec["train_file"]).read_text().splitlines():
        messages = json.loads(line)["messages"]
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    tokenizer = AutoTokenizer.from_pretrained(spec["base_model"])
    model = AutoModelForCausalLM.from_pretrained(spec["base_model"], dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(Path(spec_path).parent / "bare-checkpoints"),
            num_train_epochs=float(settings["epochs"]),
            max_steps=int(spec.get("max_steps") or -1),
            learning_rate=float(settings["learning_rate"]),
            per_device_train_batch_size=int(settings["batch_size"]),
            gradient_accumulation_steps=int(settings["gradient_accumulation_steps"]),
            max_length=int(settings["max_seq_length"]),
            save_steps=int(settings["save_steps"]),
            save_total_limit=2,
            logging_steps=0.02,
            include_num_input_tokens_seen="non_padding",
            report_to="none",
            seed=int(settings["seed"]),
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=settings["lora_rank"],
            lora_alpha=settings["lora_alpha"],
            lora_dropout=settings["lora_dropout"],
            target_modules=settings["target_modules"][0]
            if settings["target_modules"] == ["all-linear"]
            else settings["target_modules"],
            task_type="CAUSAL_LM",
        ),
    )
    trainer.train()
    trainer.save_model(str(Path(spec_path).parent / "bare-adapter"))
    print(int(trainer.state.num_input_tokens_seen))


if __name__ == "__main__":
    main(sys.argv[1])
