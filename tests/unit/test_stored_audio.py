"""Stored ``input_audio`` parts of the Responses and Conversations APIs: transcribed (and
charged) once, on the turn that brings them; later turns of the chain or conversation send
the transcript kept with the part, and clients get the part back as they gave it (OpenAI's
schemas of listed items have no ``input_audio`` part: they are not the oracle here)."""

import base64

from serve_app.auth import APIKey
from serve_app.protocol.items import TRANSCRIPT as KEPT
from serve_app.protocol.items import public_items, to_messages
from tests.unit.fakes import local_limiter
from tests.unit.responses_app import TRANSCRIPT, App

AUDIO = {
    "type": "input_audio",
    "input_audio": {"data": base64.b64encode(b"RIFF" + b"\x00" * 64).decode(), "format": "wav"},
}
SPOKEN = [{"role": "user", "content": [{"type": "input_text", "text": "Answer:"}, AUDIO]}]
HEARD = {  # the message the model gets for SPOKEN, on every turn
    "role": "user",
    "content": [{"type": "text", "text": "Answer:"}, {"type": "text", "text": TRANSCRIPT}],
}


def test_a_chains_audio_is_transcribed_and_charged_once(tmp_path):
    """The key has 3 audio seconds a minute and each clip is 2: a chain that transcribed its
    clip again on each turn would be refused on the third (4 of 3 spent)."""
    key = APIKey(name="k", secret="s3cret", limits={"audio_seconds_per_minute": 3})
    app = App(tmp_path, [key], limiter=local_limiter(tmp_path))
    headers = {"Authorization": "Bearer s3cret"}
    with app.http:
        first = app.post(key="s3cret", input=SPOKEN)
        assert first.status_code == 200, first.text
        assert app.sent()["messages"] == [HEARD] and len(app.whisper.calls) == 1
        rid = first.json()["id"]
        for question in ("And then?", "Why?"):
            turn = app.post(key="s3cret", input=question, previous_response_id=rid)
            assert turn.status_code == 200, turn.text
            assert app.sent()["messages"][0] == HEARD
            rid = turn.json()["id"]
        assert len(app.whisper.calls) == 1
        listed = app.http.get(f"/v1/responses/{first.json()['id']}/input_items", headers=headers)
        assert listed.json()["data"][0]["content"] == SPOKEN[0]["content"]  # as given


def test_a_conversations_audio_is_transcribed_once(app):
    """Audio added through the Conversations API is transcribed by the first response that
    reads it, which keeps the transcript in the conversation; audio a response brings is kept
    with its input; the items list and read back as given."""
    client = app.sdk()
    conv = client.conversations.create(items=SPOKEN)
    for given in ("Hi", SPOKEN, "Bye"):
        assert app.post(input=given, conversation=conv.id).status_code == 200
    assert len(app.whisper.calls) == 2  # the conversation's clip, then the second response's
    users = [m for m in app.sent()["messages"] if m["role"] == "user"]
    hi, bye = ({"role": "user", "content": said} for said in ("Hi", "Bye"))
    assert users == [HEARD, hi, HEARD, bye]
    listed = app.http.get(f"/v1/conversations/{conv.id}/items?order=asc").json()
    said = [item["content"] for item in listed["data"] if item["role"] == "user"]
    assert said == [SPOKEN[0]["content"], [{"type": "input_text", "text": "Hi"}],
                    SPOKEN[0]["content"], [{"type": "input_text", "text": "Bye"}]]  # fmt: skip
    first = listed["data"][0]["id"]
    assert app.http.get(f"/v1/conversations/{conv.id}/items/{first}").json() == listed["data"][0]


def test_a_kept_transcript_goes_as_text_and_never_to_clients():
    item = {
        "id": "msg_1",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": "Answer:"}, {**AUDIO, KEPT: TRANSCRIPT}],
    }
    assert to_messages([item]) == [HEARD]
    assert public_items([item]) == [{**item, "content": SPOKEN[0]["content"]}]
    assert KEPT in item["content"][1]  # the stored item is left as it is
