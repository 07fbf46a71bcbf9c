"""The rollout engine as the multi-turn loop drives it: submit one turn, step, collect finished turns.

vLLM's engine is stepped directly (its offline ``LLM.generate`` runs a batch to its end): each step
decodes every running request once, so turns submitted between steps join the running batch
(continuous batching across trajectories).
"""

from __future__ import annotations

from rlhf_ray.envs.loop import TurnOutput


class VLLMTurns:
    def __init__(self, llm, temperature: float, top_p: float, lora_request=None):
        self.engine = llm.llm_engine
        self.lora_request = lora_request  # the adapter version every turn of this call is generated with
        self.temperature, self.top_p = temperature, top_p
        self.running: set[str] = set()

    @property
    def busy(self) -> bool:
        return self.engine.has_unfinished_requests()

    def submit(self, key: str, token_ids: list[int], max_tokens: int, stop: tuple[str, ...], seed: int) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(n=1, temperature=self.temperature, top_p=self.top_p, max_tokens=max_tokens,
                                logprobs=0, seed=seed, stop=list(stop), include_stop_str_in_output=True)
        params.output_kind = RequestOutputKind.FINAL_ONLY  # one output per turn, when it ends
        self.engine.add_request(key, TokensPrompt(prompt_token_ids=token_ids), params, lora_request=self.lora_request)
        self.running.add(key)

    def step(self) -> list[TurnOutput]:
        out = []
        for o in self.engine.step():
            if o.finished:
                self.running.discard(o.request_id)
                c = o.outputs[0]
                out.append(TurnOutput(o.request_id, list(c.token_ids),
                                      [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)],
                                      "length" if c.finish_reason == "length" else "stop"))
        return out

    def abort(self) -> None:
        """Drops the turns still running (a failed generation): the engine's next call starts clean."""
        if self.running:
            self.engine.abort_request(sorted(self.running))
            self.running.clear()
