"""How an observation becomes token ids appended to a trajectory.

The conversation is never re-tokenized: the policy's ids are kept as generated, and each
observation is tokenized once and appended. Re-tokenizing the whole text can merge tokens across
the boundary differently from what was sampled, and the learner must score exactly the ids the
policy produced.

kind="chat_template" derives the text to append from the model's own chat template, by rendering
a sentinel conversation with and without the observation messages and taking the difference:
the assistant's end-of-turn string, the messages as the template renders them, and the next
generation prompt. Anything the template puts before (a default system prompt) is in both renders
and cancels out. kind="tagged" is for models without a chat template: each message's content goes
into ``observation_template``.
"""

from __future__ import annotations

KINDS = ("chat_template", "tagged")
DEFAULT_OBSERVATION_TEMPLATE = "\n<tool_response>\n{observation}\n</tool_response>\n"
_USER = {"role": "user", "content": "U"}
_ASSISTANT = {"role": "assistant", "content": "<<rlhf_ray assistant turn sentinel>>"}
_PROBE = [{"role": "tool", "content": "<<rlhf_ray observation sentinel>>"}]


class TurnFormat:
    """The text (and ids) appended after a policy turn for the environment's messages."""

    def __init__(self, tokenizer, kind: str = "chat_template",
                 observation_template: str = DEFAULT_OBSERVATION_TEMPLATE):
        if kind not in KINDS:
            raise ValueError(f"env.format must be one of {KINDS}, got {kind!r}")
        self.tokenizer = tokenizer
        self.kind = kind
        self.name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        if kind == "tagged":
            if "{observation}" not in observation_template:
                raise ValueError(f"env.observation_template must contain '{{observation}}', got {observation_template!r}")
            try:
                observation_template.format(observation="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"env.observation_template {observation_template!r} is not a format string with only "
                                 f"{{observation}} (write other braces doubled, {{{{ }}}}): {e!r}") from None
            self.observation_template = observation_template
            return
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {self.name} has no chat template; use env.format=tagged")
        self._prefix = self._render([_USER, _ASSISTANT], add_generation_prompt=False)
        if self._prefix.count(_ASSISTANT["content"]) != 1:
            raise ValueError(f"the chat template of {self.name} does not render an assistant message's content "
                             "verbatim; use env.format=tagged")
        # What the template writes after an assistant's content: its end-of-turn string ("<|im_end|>\n").
        self.end_of_turn = self._prefix.split(_ASSISTANT["content"])[1]
        self._delta(_PROBE)  # fail now, not at the first tool call, if tool messages cannot be appended
        eos = tokenizer.eos_token
        self._eos = eos if eos and self.end_of_turn.startswith(eos) else None

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as e:  # jinja's TemplateError, a template's raise_exception, ...
            roles = "/".join(m["role"] for m in messages)
            raise ValueError(f"the chat template of {self.name} cannot render the messages {roles} "
                             f"({type(e).__name__}: {e}); use env.format=tagged") from None

    def _delta(self, messages: list[dict]) -> str:
        """What the template adds after the assistant's end-of-turn for ``messages`` and the next prompt."""
        full = self._render([_USER, _ASSISTANT, *messages], add_generation_prompt=True)
        if not full.startswith(self._prefix):
            raise ValueError(f"the chat template of {self.name} re-renders earlier turns when a tool message follows; "
                             "use env.format=tagged")
        return full[len(self._prefix):]

    def observation_text(self, messages: list[dict], turn_ended_with_eos: bool) -> str:
        """The text to append after the policy's turn. A turn that ended with the eos token already
        holds that token, so it is left out of the end-of-turn string; a turn cut at a stop string
        (a tool call's closing tag) gets all of it."""
        if self.kind == "tagged":
            return "".join(self.observation_template.format(observation=m["content"]) for m in messages)
        end = self.end_of_turn
        if turn_ended_with_eos:
            if self._eos is None:
                raise ValueError(f"the turn ended with the eos token {self.tokenizer.eos_token!r}, but the chat template "
                                 f"of {self.name} ends an assistant turn with {self.end_of_turn!r}")
            end = end[len(self._eos):]
        return end + self._delta(messages)

    def observation_ids(self, messages: list[dict], turn_ended_with_eos: bool) -> list[int]:
        text = self.observation_text(messages, turn_ended_with_eos)
        return self.tokenizer(text, add_special_tokens=False).input_ids
