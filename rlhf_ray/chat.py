"""The chat template, applied the same way to online prompts (rlhf_ray.prompts) and to offline ones
(rlhf_ray.data.preference).

Its own module so that neither of those imports the other: the prompt sets read their files through
rlhf_ray.data, whose package imports the offline encoder.
"""

from __future__ import annotations


def chat_texts(tokenizer, questions: list[str], system_prompt: str | None, instruction: str) -> list[str]:
    out = []
    for q in questions:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": q + instruction})
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out
