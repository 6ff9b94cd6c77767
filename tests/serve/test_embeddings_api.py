"""``/v1/embeddings`` end to end: the real all-MiniLM-L6-v2 on vLLM's pooling runner, through
real Serve and HTTP, driven by the official SDK; vectors checked against an independent
computation with transformers (mean pooling over the attention mask, L2 normalisation)."""

import base64

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from serve_app.models import default_models_dir
from tests.openai_schema import validate
from tests.serve.conftest import OTHER_KEY

pytestmark = pytest.mark.serve

MODEL = "all-minilm-l6-v2"
UPSTREAM = "text-embedding-3-large"  # the loopback provider's name for the same model
SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "Quarterly revenue grew by twelve percent despite higher costs.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "How do I reset my router's admin password?",
    "Der Zug nach Berlin hat zwanzig Minuten Verspätung.",
    "A kitten was resting on the sunny ledge of the window.",
    "def add(a, b): return a + b",
    "The committee postponed its vote until next spring.",
    "Glaciers in the Alps have lost a third of their volume since 1980.",
    "ok",
    "Migrating birds navigate using the Earth's magnetic field and the stars at night.",
    "Please cancel my subscription and refund the last payment.",
]


@pytest.fixture(scope="module")
def reference():
    """sentence -> all-MiniLM-L6-v2's vector computed with transformers in this process."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = default_models_dir() / MODEL
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    vectors = torch.nn.functional.normalize(pooled, dim=1).numpy()
    return dict(zip(SENTENCES, vectors, strict=True)), tokenizer


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_vectors_match_transformers_in_input_order(client: OpenAI, reference):
    vectors, _ = reference
    result = client.embeddings.create(model=MODEL, input=SENTENCES)  # the SDK asks for base64
    assert [d.index for d in result.data] == list(range(len(SENTENCES)))
    for sentence, item in zip(SENTENCES, result.data, strict=True):
        assert len(item.embedding) == 384
        assert cosine(item.embedding, vectors[sentence]) >= 0.99, sentence
        assert abs(np.linalg.norm(item.embedding) - 1) < 1e-4  # normalised, as the model says
    assert result.model == MODEL and result.object == "list"
    assert result.usage.prompt_tokens == result.usage.total_tokens > len(SENTENCES)


def test_float_and_base64_are_the_same_little_endian_float32(http: httpx.Client):
    body = {"model": MODEL, "input": SENTENCES[:4]}
    floats = http.post("/v1/embeddings", json={**body, "encoding_format": "float"})
    packed = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    assert floats.status_code == packed.status_code == 200, (floats.text, packed.text)
    validate(floats.json(), "CreateEmbeddingResponse")
    usage = floats.json()["usage"]
    assert set(usage) == {"prompt_tokens", "total_tokens"}
    assert (
        usage["prompt_tokens"] == usage["total_tokens"] == packed.json()["usage"]["prompt_tokens"]
    )
    for a, b in zip(floats.json()["data"], packed.json()["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.array_equal(np.asarray(a["embedding"], dtype=np.float32), decoded)


def test_a_sentence_alone_equals_it_in_a_batch(client: OpenAI):
    batch = client.embeddings.create(model=MODEL, input=SENTENCES).data
    for i in (0, 5, 9):
        alone = client.embeddings.create(model=MODEL, input=SENTENCES[i]).data[0].embedding
        assert np.allclose(alone, batch[i].embedding, atol=1e-5), SENTENCES[i]


def test_token_ids_embed_like_their_text(client: OpenAI, reference):
    vectors, tokenizer = reference
    ids = [tokenizer(s)["input_ids"] for s in SENTENCES[:3]]
    many = client.embeddings.create(model=MODEL, input=ids).data
    one = client.embeddings.create(model=MODEL, input=ids[1]).data[0]
    for sentence, item in zip(SENTENCES[:3], many, strict=True):
        assert cosine(item.embedding, vectors[sentence]) >= 0.99
    assert np.allclose(one.embedding, many[1].embedding, atol=1e-5)


def test_dimensions_is_the_models_own_or_a_400_naming_it(client: OpenAI):
    same = client.embeddings.create(model=MODEL, input="hi", dimensions=384, user="u-1")
    assert len(same.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="hi", dimensions=128)
    assert info.value.body["param"] == "dimensions"
    assert "Matryoshka" in info.value.body["message"]


def test_long_input_is_a_400_unless_truncation_is_asked_for(client: OpenAI):
    long = "word " * 600
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=["short", long])
    assert info.value.body["param"] == "input" and "256" in info.value.body["message"]
    cut = client.embeddings.create(
        model=MODEL, input=long, extra_body={"truncate_prompt_tokens": -1}
    )
    assert cut.usage.prompt_tokens == 256
    some = client.embeddings.create(
        model=MODEL, input=long, extra_body={"truncate_prompt_tokens": 10}
    )
    assert some.usage.prompt_tokens == 10
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="x", extra_body={"truncate_prompt_tokens": 300})
    assert info.value.body["param"] == "truncate_prompt_tokens"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": [[]]}, "input[0]"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": [1, -2]}, "input[1]"),
        ({"input": [[101, 10**7, 102]]}, "input"),  # beyond the vocabulary
        ({"input": "x", "encoding_format": "bytes"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": "384"}, "dimensions"),
        ({"input": "x", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"input": "x", "padding": "max_length"}, "padding"),  # vLLM's, not ours: unknown
        ({"input": "x", "user": 7}, "user"),
    ],
)
def test_bad_fields_are_400s_naming_them(http: httpx.Client, body: dict, param: str):
    response = http.post("/v1/embeddings", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_models_show_embedding_models_with_their_dimensions(client: OpenAI, http: httpx.Client):
    cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    assert cards[MODEL]["type"] == "embedding"
    assert cards[MODEL]["dimensions"] == 384 and cards[MODEL]["context_length"] == 256
    assert cards[UPSTREAM]["type"] == "embedding" and cards[UPSTREAM]["dimensions"] == 384
    assert "dimensions" not in cards["smollm2-135m-instruct"]
    alias = client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert alias.model == MODEL


def test_chat_and_embedding_models_stay_in_their_lanes(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="smollm2-135m-instruct", input="hi")
    assert info.value.body["code"] == "model_not_supported"
    for model in (MODEL, UPSTREAM):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.body["code"] == "model_not_supported"


def test_an_upstream_provider_forwards_embeddings(client: OpenAI):
    local = client.embeddings.create(model=MODEL, input=SENTENCES[:3])
    remote = client.embeddings.create(model=UPSTREAM, input=SENTENCES[:3])
    assert remote.model == UPSTREAM
    assert remote.usage.prompt_tokens == local.usage.prompt_tokens
    for a, b in zip(local.data, remote.data, strict=True):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)
    with pytest.raises(openai.BadRequestError) as info:  # the provider's 400, passed on
        client.embeddings.create(model=UPSTREAM, input="hi", dimensions=64)
    assert info.value.body["param"] == "dimensions"


def test_embeddings_have_their_own_scope_and_spend_the_token_budget(base_url: str):
    def as_key(secret: str) -> OpenAI:
        return OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0)

    with pytest.raises(openai.PermissionDeniedError):
        as_key("chat-only-secret").embeddings.create(model=MODEL, input="hi")
    assert as_key(OTHER_KEY).embeddings.create(model=MODEL, input="hi").data
    budget = as_key("embed-tokens-secret")
    spent = budget.embeddings.create(model=MODEL, input=SENTENCES)
    assert spent.usage.prompt_tokens > 30  # the key's whole minute
    with pytest.raises(openai.RateLimitError):
        budget.embeddings.create(model=MODEL, input="hi")
