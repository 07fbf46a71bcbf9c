"""The chat template, applied the same way to online prompts (rlhf_ray.data.prompts) and to offline ones
(rlhf_ray.data.preference).

Its own module so that neither of those imports the other: the prompt sets read their files through
rlhf_ray.data, whose package imports the offline encoder.
"""

from __future__ import annotations


def chat_texts(tokenizer, questions: list, system_prompt: str | None, instruction: str) -> list[str]:
    """Each question (a string: one user turn, ``instruction`` appended; or a dialogue: a list of chat
    messages, ending with a user turn) in the chat template, ready for the model's answer."""
    out = []
    for q in questions:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages += list(q) if isinstance(q, list) else [{"role": "user", "content": q + instruction}]
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


def prompt_text(prompt) -> str:
    """A prompt as plain text for another model's prompt (a judge's): a dialogue's turns as 'Human:' /
    'Assistant:' lines, a question as it is."""
    if isinstance(prompt, str):
        return prompt
    who = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{who.get(m['role'], m['role'])}: {m['content']}" for m in prompt)
