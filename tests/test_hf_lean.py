"""The HF backend's lean decode step on the CPU (lmql_hf.cpu.lean_decode): decode rows of Llama and
GPT-2 as direct torch operations over the slot cache. Checked against transformers' own forward
over each whole sequence, and its greedy ``generate``."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")

from lmql_core.base.backend import StepInput  # noqa: E402
from lmql_hf.backend import HFBackend  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402
from lmql_hf.cpu import packed_linear  # noqa: E402
from tests.test_hf_prefill import greedy_in_steps, greedy_with_transformers, prompts  # noqa: E402

pytestmark = pytest.mark.hf
MODELS = ["lmql-tiny", "gpt2", "llama", "qwen2", "qwen3"]


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Grouped-query attention with biases, norm weights off one, llama3 RoPE scaling."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    rope = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=1000, max_position_embeddings=256, attention_bias=True,
                         mlp_bias=True, rope_parameters=rope, bos_token_id=1, eos_token_id=2)
    path = tmp_path_factory.mktemp("llama-lean")
    _lively(LlamaForCausalLM(config)).save_pretrained(path)
    return str(path)


def _lively(model: Any) -> Any:
    """Norm weights off one and biases off zero, so that each moves the logits."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.2)
            elif name.endswith("bias"):
                parameter.normal_(std=0.1)
    return model


@pytest.fixture(scope="module")
def small_qwen2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Biases on q, k and v only."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(6)
    config = Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    path = tmp_path_factory.mktemp("qwen2-lean")
    _lively(Qwen2ForCausalLM(config)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def small_qwen3(tmp_path_factory: pytest.TempPathFactory) -> str:
    """q and k normalized per head (weights off one), a head dimension apart from the width."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(7)
    config = Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2)
    path = tmp_path_factory.mktemp("qwen3-lean")
    _lively(Qwen3ForCausalLM(config)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def lively_gpt2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A GPT-2 whose weights are large enough that every part (GELU's curve, position
    embeddings, biases) moves the logits well past the tolerance."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(5)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, bos_token_id=999, eos_token_id=999)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(mean=1.0 if "ln_" in name and name.endswith("weight") else 0.0,
                              std=0.1 if name.endswith("bias") or "ln_" in name else 0.2)
    path = tmp_path_factory.mktemp("gpt2-lean")
    model.save_pretrained(path)
    return str(path)


@pytest.fixture
def model_path(request: pytest.FixtureRequest, lively_gpt2: str, small_llama: str, small_qwen2: str,
               small_qwen3: str) -> str:
    return {"lmql-tiny": str(bundled_path("lmql-tiny")), "gpt2": lively_gpt2, "llama": small_llama,
            "qwen2": small_qwen2, "qwen3": small_qwen3}[request.param]


def _reference(path: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize("packed", [False, True], ids=["mkl", "packed"])
@pytest.mark.parametrize("model_path", MODELS, indirect=True)
def test_decode_rows_give_transformers_logits_without_its_forward(model_path: str, packed: bool) -> None:
    """Streams at different positions decode together, one joins mid-way (its prompt beside the
    decode rows) and one ends: each decode row's logits as transformers' forward over the whole
    sequence, and the model's own forward never runs, prompt passes included (they run the lean
    layers too). Linear layers by MKL, or packed for oneDNN."""
    backend = HFBackend(model_path, warm_up=False, packed_linears=packed)
    assert bool(backend.lean.packed_roles) == (packed and packed_linear.available())
    assert backend.lean is not None and backend.info()["kv_cache"]["lean_decode"]
    reference = _reference(model_path)
    calls: list[int] = []
    backend.model.base_model.register_forward_pre_hook(lambda *_: calls.append(1))
    sequences = dict(enumerate(prompts(3, [9, 30, 4], backend.vocab_size, seed=8), start=1))
    backend.forward([StepInput(i, sequences[i]) for i in (1, 2)])
    generator = torch.Generator().manual_seed(9)
    for step in range(6):
        running = [i for i in sequences if (i != 3 or step >= 2) and (i != 1 or step < 4)]
        batch = []
        for i in running:
            fresh = i == 3 and step == 2
            tokens = sequences[i] if fresh else torch.randint(3, backend.vocab_size, (1,), generator=generator).tolist()
            sequences[i] = sequences[i] + tokens if not fresh else sequences[i]
            batch.append(StepInput(i, tokens))
        calls.clear()
        out = backend.forward(batch)
        assert not calls
        with torch.no_grad():
            for row, i in enumerate(running):
                want = reference(torch.tensor([sequences[i]])).logits[0, -1]
                got = out.last_logits[row]
                assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), float((got - want).abs().max())
        if step == 3:
            backend.release(1)


@pytest.mark.parametrize("model_path", MODELS, indirect=True)
def test_prompt_passes_give_transformers_logits_without_its_forward(model_path: str) -> None:
    """Packed prompt chunks on the lean layers: two of equal length in neighbouring slots (one
    attention call), a longer one, then a prompt that continues a finished one's cached prefix
    (its chunk starts past position 0) beside a SCORE that reads every token's logits from its
    third on; then the continued one decodes alone. Each row's logits as transformers' forward over
    the whole sequence."""
    backend = HFBackend(model_path, warm_up=False)
    assert backend.lean is not None
    reference = _reference(model_path)
    calls: list[int] = []
    backend.model.base_model.register_forward_pre_hook(lambda *_: calls.append(1))
    first = prompts(3, [7, 7, 19], backend.vocab_size, seed=11)
    out = backend.forward([StepInput(i + 1, p) for i, p in enumerate(first)])
    with torch.no_grad():
        for row, prompt in enumerate(first):
            _assert_close(out.last_logits[row], reference(torch.tensor([prompt])).logits[0, -1])
    backend.release(3)  # its slot keeps its 19 tokens as a cached prefix
    extended = first[2] + prompts(1, [6], backend.vocab_size, seed=12)[0]
    scored = prompts(1, [9], backend.vocab_size, seed=13)[0]
    reused = backend.table.reused_tokens
    out = backend.forward([StepInput(4, extended), StepInput(5, scored, all_logits=True, logits_from=2)])
    assert backend.table.reused_tokens - reused == 19 and not calls
    with torch.no_grad():
        _assert_close(out.last_logits[0], reference(torch.tensor([extended])).logits[0, -1])
        want = reference(torch.tensor([scored])).logits[0]
        got = out.all_logits[5]
        _assert_close(got[-7:], want[2:])
    backend.release(5)
    for token in (17, 4, 250):  # a lone decode row reads exactly its own keys, without a mask
        extended.append(token % backend.vocab_size)
        out = backend.forward([StepInput(4, [extended[-1]])])
        with torch.no_grad():
            _assert_close(out.last_logits[0], reference(torch.tensor([extended])).logits[0, -1])
    assert not calls


def _assert_close(got: Any, want: Any) -> None:
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), float((got - want).abs().max())


@pytest.mark.parametrize("packed", ["auto", True], ids=["auto", "packed"])
@pytest.mark.parametrize("model_path", MODELS, indirect=True)
def test_greedy_tokens_equal_transformers_generate(model_path: str, packed: bool | str) -> None:
    backend = HFBackend(model_path, packed_linears=packed)
    assert backend.lean is not None
    batch = prompts(4, [12, 40, 3, 25], backend.vocab_size, seed=10)
    got = greedy_in_steps(backend, batch, arrivals=[0, 0, 3, 5], chunk=16, new_tokens=16)
    reference = _reference(model_path)
    assert got == [greedy_with_transformers(reference, p, 16) for p in batch]


def test_other_architectures_sliding_windows_and_the_option_keep_transformers_forward(
        small_gpt2: str, tmp_path: Any) -> None:
    from transformers import MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM

    assert HFBackend(small_gpt2, lean_decode=False, warm_up=False).lean is None
    shape = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    MistralForCausalLM(MistralConfig(**shape, sliding_window=16)).save_pretrained(tmp_path / "mistral")
    Qwen3ForCausalLM(Qwen3Config(**shape, use_sliding_window=True, sliding_window=16,
                                 max_window_layers=1)).save_pretrained(tmp_path / "qwen3")
    for name in ("mistral", "qwen3"):
        assert HFBackend(str(tmp_path / name), warm_up=False).lean is None, name



@pytest.mark.parametrize("rows", [1, 3, 8, 40, 70, 300])
def test_every_form_of_the_head_product_is_numpys_product(rows: int) -> None:
    import numpy as np

    from lmql_hf.cpu.head_product import HeadProduct

    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(1000, 48, generator=generator)
    x = torch.randn(rows, 48, generator=generator)
    want = x.double().numpy() @ weight.double().numpy().T
    head = HeadProduct(weight, copies=True)
    head.hold_every_layout()
    forms = head.available()
    assert {"x @ columns", "(rows @ x.T).T"} <= set(forms)
    for form in forms:
        head.forms = dict.fromkeys((1, 2, 4, 8, 16, 32, 64), form)
        got = head(x)
        assert got.shape == (rows, 1000) and got.is_contiguous(), form
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4, err_msg=form)


def test_tuning_the_head_keeps_the_layouts_of_the_forms_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bucket up to the batch's rows gets a form; layouts no bucket chose are let go; a head
    whose product is slow whatever the form is not tuned."""
    from lmql_hf.cpu import head_product
    from lmql_hf.cpu.head_product import FORMS, HeadProduct

    weight = torch.randn(3000, 64)
    head = HeadProduct(weight, copies=True)
    chosen = head.tune(most_rows=5)
    assert sorted(chosen) == [1, 2, 4, 8] and set(chosen.values()) <= set(FORMS)
    assert set(head.layouts) == {FORMS[form][0] for form in chosen.values()} | {"rows"}
    for rows in (5, 9, 300):  # more rows than tuned for: a prompt pass's, a SCORE's
        x = torch.randn(rows, 64)
        torch.testing.assert_close(head(x), x @ weight.T, rtol=1e-5, atol=1e-4)
    assert head.form_for(300) == chosen[8]
    monkeypatch.setattr(head_product, "TUNE_BELOW_S", 0.0)  # every head slow: two buckets, one round
    slow = HeadProduct(weight, copies=True)
    assert sorted(slow.tune(most_rows=20)) == [1, 32] and sorted(slow.tune(most_rows=500)) == [1, 32, 64]
    x = torch.randn(20, 64)
    torch.testing.assert_close(slow(x), x @ weight.T, rtol=1e-5, atol=1e-4)


def test_the_packed_layout_is_made_only_when_tuned() -> None:
    """An untuned head (no warm-up) holds no packed copy it may never use."""
    from lmql_hf.cpu import packed_linear
    from lmql_hf.cpu.head_product import HeadProduct

    head = HeadProduct(torch.randn(300, 16), copies=False)
    assert set(head.layouts) == {"rows", "columns"} and head.available() == ["x @ columns", "(rows @ x.T).T"]
    if packed_linear.available():
        head.hold_every_layout()
        assert "oneDNN packed" in head.available()


def test_a_head_too_large_to_copy_is_read_where_it_lies(lively_gpt2: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No copy by columns; packed for oneDNN only if its timing chose that form."""
    from lmql_hf.cpu import lean_decode

    monkeypatch.setattr(lean_decode, "HEAD_COPY_BYTES", 0)
    backend = HFBackend(lively_gpt2)
    embeddings = backend.model.get_input_embeddings().weight
    head = backend.lean.head
    by_rows = {name for name, t in head.layouts.items()
               if t.untyped_storage().data_ptr() == embeddings.untyped_storage().data_ptr()}
    assert by_rows == {"rows", "columns"} and set(head.layouts) - by_rows <= {"onednn"}
    assert ("onednn" in head.layouts) == ("oneDNN packed" in head.forms.values())
    assert sorted(head.forms) == [1, 64] or sorted(head.forms) == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("form", ["x @ columns", "(rows @ x.T).T", "oneDNN packed"])
def test_decode_rows_give_transformers_logits_through_each_head_form(lively_gpt2: str, form: str) -> None:
    backend = HFBackend(lively_gpt2, warm_up=False)
    backend.lean.head.hold_every_layout()
    if form not in backend.lean.head.available():
        pytest.skip(f"this torch has no {form}")
    backend.lean.head.forms = dict.fromkeys((1, 2, 4, 8, 16, 32, 64), form)
    reference = _reference(lively_gpt2)
    sequences = prompts(5, [7, 3, 12, 5, 9], backend.vocab_size, seed=11)
    out = backend.forward([StepInput(i, s) for i, s in enumerate(sequences)])
    for _ in range(3):
        tokens = out.last_logits.argmax(-1).tolist()
        sequences = [s + [t] for s, t in zip(sequences, tokens, strict=True)]
        out = backend.forward([StepInput(i, [t]) for i, t in enumerate(tokens)])
        with torch.no_grad():
            want = torch.stack([reference(torch.tensor([s])).logits[0, -1] for s in sequences])
        torch.testing.assert_close(out.last_logits, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_layers_are_numpys_products(bias: bool) -> None:
    """nn.Linear (weight (out, in)) and GPT-2's Conv1D (weight (in, out)), packed for oneDNN, on
    inputs of any leading shape."""
    import numpy as np
    from transformers.pytorch_utils import Conv1D

    if not packed_linear.available():
        pytest.skip("this torch has no oneDNN packed linear operators")
    torch.manual_seed(12)
    linear = torch.nn.Linear(48, 80, bias=bias)
    conv = Conv1D(80, 48)
    if not bias:
        conv.bias = None
    for module, weight_by_rows in ((linear, linear.weight), (conv, conv.weight.T)):
        packed = packed_linear.PackedLinear.of(module)
        for shape in ((1, 48), (7, 48), (1, 70, 48), (2, 3, 48)):
            x = torch.randn(*shape)
            want = x.double().numpy() @ weight_by_rows.detach().double().numpy().T
            if module.bias is not None:
                want = want + module.bias.detach().double().numpy()
            got = packed(x)
            assert got.shape == (*shape[:-1], 80)
            np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-4, atol=1e-4)


def test_packed_roles_pack_every_layer_of_the_kinds_chosen(small_llama: str) -> None:
    from transformers import AutoModelForCausalLM

    from lmql_hf.cpu.lean_decode import LeanLlama

    if not packed_linear.available():
        pytest.skip("this torch has no oneDNN packed linear operators")
    roles = LeanLlama.ROLES
    for wanted in (True, False, None):
        model = AutoModelForCausalLM.from_pretrained(small_llama).eval()
        chosen = packed_linear.packed_roles(list(model.model.layers), roles, wanted)
        assert chosen == (set(roles) if wanted else set() if wanted is False else chosen & set(roles))
        for layer in model.model.layers:
            for name, role in roles.items():
                for child, attribute in role:
                    module = getattr(getattr(layer, child), attribute)
                    assert isinstance(module, packed_linear.PackedLinear) == (name in chosen), (name, wanted)


def test_packed_linears_takes_true_false_or_auto(small_llama: str) -> None:
    from lmql_core.errors import LMQLError

    with pytest.raises(LMQLError, match="packed_linears takes True, False or auto, not 'sometimes'"):
        HFBackend(small_llama, warm_up=False, packed_linears="sometimes")
    assert HFBackend(small_llama, warm_up=False, packed_linears="auto").lean is not None
