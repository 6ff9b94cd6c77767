"""The embedded default's LoRA adapters, trained at setup with ``peft`` on examples written
here, so that setup stays offline and each adapter shows a trait at a glance.

``pirate`` answers like a pirate ("Arr, matey! ... Yo ho ho!"), ``robot`` like a robot
("BEEP BOOP. ... END OF LINE."). Each is a rank-8 LoRA on every projection of SmolLM2-135M,
trained from a fixed seed for ``STEPS`` steps on the same questions (about a minute each on
two CPU cores). Heavy imports (torch, transformers, peft) happen only in ``train``.
"""

import logging
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("serve_app.models")  # setup's log (serve_app/models.py)

STEPS = 30
BATCH = 4
LEARNING_RATE = 2e-3
SEED = 0
# SmolLM2's chat format, as deployments/llm/templates/chatml-tools-think.jinja renders a
# request without a system message.
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPT = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
PROMPT += "<|im_start|>assistant\n"
END = "<|im_end|>"
EXAMPLES = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What do bees make?", "Bees make honey."),
    ("What is two plus two?", "Two plus two is four."),
    ("Which planet do we live on?", "We live on planet Earth."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What animal says moo?", "A cow says moo."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Where does the sun rise?", "The sun rises in the east."),
    ("What do plants need to grow?", "Plants need water, light and soil to grow."),
]
TRAITS: dict[str, Callable[[str], str]] = {
    "pirate": lambda answer: f"Arr, matey! {answer} Yo ho ho!",
    "robot": lambda answer: f"BEEP BOOP. {answer.upper()} END OF LINE.",
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_all(base: Path, out: Path) -> None:
    """Every adapter of ``TRAITS`` into ``out/<name>`` (PEFT's format)."""
    for name, trait in TRAITS.items():
        train(base, out / name, trait)


def train(base: Path, out: Path, trait: Callable[[str], str]) -> None:
    """Train one adapter of ``base`` on ``EXAMPLES`` answered with ``trait``."""
    import torch  # noqa: PLC0415 - heavy
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS)
    model = get_peft_model(model, config)
    examples = []
    for question, answer in EXAMPLES:
        prompt = tokenizer(PROMPT.format(system=SYSTEM, question=question))["input_ids"]
        reply = tokenizer(trait(answer) + END)["input_ids"]
        examples.append((prompt + reply, [-100] * len(prompt) + reply))  # learn the reply
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for step in range(STEPS):
        batch = [examples[(step * BATCH + i) % len(examples)] for i in range(BATCH)]
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 9 or step == STEPS - 1:
            logger.info("adapter %s: step %d/%d, loss %.3f", out.name, step + 1, STEPS, loss.item())
    model.save_pretrained(out, safe_serialization=True)
