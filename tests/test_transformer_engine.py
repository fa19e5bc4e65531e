"""The per-sample engine on transformers: every parameter of a standard block (BERT, GPT-2, Llama,
nn.TransformerEncoder) has a closed-form rule, and the measures equal the brute-force per-sample loop in float64,
padded batches included. Where a rule's closed form would not hold, the parameters go to torch.func, still exact."""
import pytest
import torch
from torch import nn

from clreg import importance
from clreg.importance import TaskSample
from clreg.importance.persample import coverage
from reference import naive_measure

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH, CLASSES = 23, 6, 3


def assert_close(actual, expected, rtol=1e-9):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=1e-12 * max(1.0, float(e.abs().max())))


class Logits(nn.Module):
    """A Hugging Face model's logits as the forward's result (what the reference and the engine both call)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        return self.model(**inputs).logits


class Encoder(nn.Module):
    """nn.TransformerEncoder classifier with a learned position embedding looked up once for the batch."""

    def __init__(self, batch_first=True, causal=False):
        super().__init__()
        self.batch_first, self.causal = batch_first, causal
        self.embed = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.position = nn.Embedding(LENGTH, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids) + self.position(torch.arange(input_ids.shape[1]).unsqueeze(0))
        mask = nn.Transformer.generate_square_subsequent_mask(input_ids.shape[1], dtype=h.dtype) if self.causal else None
        padding = attention_mask == 0
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.encoder(h, mask=mask, src_key_padding_mask=padding, is_causal=self.causal)
        if not self.batch_first:
            h = h.transpose(0, 1)
        keep = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


def build(name):
    torch.manual_seed(0)
    if name.startswith("encoder"):
        return Encoder(batch_first="first" not in name, causal="causal" in name)
    small = dict(vocab_size=VOCAB, num_labels=CLASSES, pad_token_id=0)
    if name == "bert":
        config = transformers.BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=16, max_position_embeddings=LENGTH, **small)
        model = transformers.BertForSequenceClassification(config)
    elif name == "gpt2":
        config = transformers.GPT2Config(n_embd=8, n_layer=2, n_head=2, n_positions=LENGTH, bos_token_id=1,
                                         eos_token_id=1, **small)
        model = transformers.GPT2ForSequenceClassification(config)
    else:
        config = transformers.LlamaConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=1, intermediate_size=16,
                                          max_position_embeddings=LENGTH, bos_token_id=1, eos_token_id=1, **small)
        model = transformers.LlamaForSequenceClassification(config)
        if name == "llama":
            for module in model.modules():
                if type(module).__name__ == "LlamaRMSNorm":
                    module.forward = _rms_norm_in_its_own_dtype.__get__(module)
    return Logits(model)


def _rms_norm_in_its_own_dtype(self, h):
    """LlamaRMSNorm's formula without its cast to float32. That cast gives a float64 model float32 rounding:
    a cotangent that differs in its last bit (the loss's own gradient against the engine's q − e_y) then moves
    the gradients by ~1e-7 relative. The model as shipped ("llama-as-shipped") is checked at float32 accuracy."""
    return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def padded_batch(n=4):
    """Token ids (no pad token inside a sequence) with the later samples padded at the end."""
    torch.manual_seed(1)
    ids = torch.randint(1, VOCAB, (n, LENGTH))
    mask = torch.ones_like(ids)
    for i in range(1, n):
        mask[i, LENGTH - i:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


MODELS = ["encoder", "encoder-seq-first", "encoder-causal", "bert", "gpt2", "llama", "llama-as-shipped"]


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_of_a_standard_block_has_a_closed_form(name):
    model = build(name).double().eval()
    found = coverage(model, padded_batch())
    assert found and "torch.func" not in found.values(), {k: v for k, v in found.items() if v == "torch.func"}


@pytest.mark.parametrize("measure", ["fisher", "mas", "af"])
@pytest.mark.parametrize("name", MODELS)
def test_transformer_measures_equal_the_per_sample_loop(name, measure):
    model = build(name).double().eval()
    x = padded_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    omega = importance.create(measure).task_importance(params, TaskSample(model, x))
    assert_close(omega, naive_measure(measure, model, params, x), rtol=1e-6 if name == "llama-as-shipped" else 1e-9)
    assert all(float(o.sum()) > 0 for o, p in zip(omega, params) if "position" not in str(p.shape))


def test_small_chunks_give_the_same_values():
    model = build("gpt2").double().eval()
    x = padded_batch(5)
    params = list(model.parameters())
    whole = importance.create("fisher").task_importance(params, TaskSample(model, x))
    chunked = importance.create("fisher").task_importance(params, TaskSample(model, x, memory_budget=1))
    assert_close(chunked, whole, rtol=1e-12)


class SummedPositions(nn.Module):
    """Uses its broadcast position lookup in a way that is not a per-sample broadcast (summed over its first
    dimension): repeating it per sample would change the logits, so the probe sends it to torch.func."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.position = nn.Embedding(VOCAB, 4), nn.Embedding(LENGTH, 4)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, input_ids):
        pos = self.position(torch.arange(input_ids.shape[1]).unsqueeze(0)).sum(0)
        return self.head((self.embed(input_ids) + pos).tanh().mean(1))


class GemmaRMSNorm(nn.Module):
    """An RMSNorm scaled by (1 + w), as Gemma's: still element-wise affine in w."""

    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width) * 0.1)

    def forward(self, x):
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class SquaredLayerNorm(nn.LayerNorm):
    """Named like a normalisation but not affine in its weight (w² ⊙ x̂): the probe's check refuses the rule."""

    def __init__(self, width):
        super().__init__(width)
        nn.init.normal_(self.weight)

    def forward(self, x):
        return nn.functional.layer_norm(x, self.normalized_shape, self.weight.square(), self.bias, self.eps)


class Normed(nn.Module):
    def __init__(self, norm):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.norm, self.head = nn.Embedding(VOCAB, 4), norm, nn.Linear(4, CLASSES)

    def forward(self, input_ids):
        return self.head(self.norm(self.embed(input_ids)).mean(1))


@pytest.mark.parametrize("case, expected", [
    (lambda: SummedPositions(), {"position.weight": "torch.func", "embed.weight": "EmbeddingRule"}),
    (lambda: Normed(GemmaRMSNorm(4)), {"norm.weight": "NormRule"}),
    (lambda: Normed(SquaredLayerNorm(4)), {"norm.weight": "torch.func", "norm.bias": "torch.func"}),
    (lambda: nn.Sequential(nn.Embedding(VOCAB, 4), _Attention(add_zero_attn=True), _Pool(), nn.Linear(4, CLASSES)),
     {"1.attention.in_proj_weight": "torch.func", "1.attention.out_proj.weight": "torch.func"}),
], ids=["broadcast-summed", "gemma-norm", "not-affine", "zero-attn"])
def test_where_a_closed_form_does_not_hold_the_fallback_is_exact(case, expected):
    model = case().double().eval()
    ids = torch.randint(0, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(2))
    found = coverage(model, ids)
    assert {k: found[k] for k in expected} == expected
    params = list(model.parameters())
    omega = importance.create("fisher").task_importance(params, TaskSample(model, ids))
    assert_close(omega, naive_measure("fisher", model, params, ids))


class _Attention(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True, **options)

    def forward(self, h):
        return self.attention(h, h, h, need_weights=False)[0]


class _Pool(nn.Module):
    def forward(self, h):
        return h.mean(1)


class LastPosition(nn.Module):
    """A causal LM's next-token logits at each sequence's last position: (n, vocabulary)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).logits[:, -1]


@pytest.mark.parametrize("measure", ["fisher", "mas"])
def test_tied_input_and_output_embeddings_are_measured_by_their_two_rules(measure):
    """GPT-2's LM head shares its weight with the token embedding: every sample's gradient of it is the sum of the
    two modules' shares (the embedding's lookups and the head's outer products), formed before the square: no
    torch.func, and equal to the per-sample loop."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=8, n_layer=1, n_head=2, n_positions=LENGTH,
                                     bos_token_id=1, eos_token_id=1)
    model = LastPosition(transformers.GPT2LMHeadModel(config)).double().eval()
    assert model.model.lm_head.weight is model.model.transformer.wte.weight
    ids = torch.randint(1, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(3))
    found = coverage(model, ids)
    assert "torch.func" not in found.values(), found
    assert "EmbeddingRule+LinearRule" in found.values(), found
    params = list(model.parameters())
    omega = importance.create(measure).task_importance(params, TaskSample(model, ids))
    assert_close(omega, naive_measure(measure, model, params, ids))
    chunked = importance.create(measure).task_importance(params, TaskSample(model, ids, memory_budget=1))
    assert_close(chunked, omega, rtol=1e-12)


class CrossAttention(nn.Module):
    """nn.MultiheadAttention with keys and values of another width (kdim, vdim): separate q/k/v projection weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.memory = nn.Embedding(VOCAB, 4), nn.Embedding(VOCAB, 3)
        self.attention = nn.MultiheadAttention(4, 2, kdim=3, vdim=3, batch_first=True)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, input_ids):
        memory = self.memory(input_ids.flip(1))
        return self.head(self.attention(self.embed(input_ids), memory, memory, need_weights=False)[0].mean(1))


def test_attention_with_separate_projection_weights_has_its_closed_form():
    model = CrossAttention().double().eval()
    ids = torch.randint(0, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(4))
    found = coverage(model, ids)
    assert found["attention.q_proj_weight"] == found["attention.k_proj_weight"] == "MultiheadAttentionRule"
    params = list(model.parameters())
    omega = importance.create("fisher").task_importance(params, TaskSample(model, ids))
    assert_close(omega, naive_measure("fisher", model, params, ids))
