"""The fake Discord refuses Components V2 bodies as Discord documents (docs.discord.com/developers/components,
Component Reference): the IS_COMPONENTS_V2 flag (1<<15) forbids content/embeds; 40 components in all (nested
count); 4,000 characters across text displays; a media gallery holds 1-10 items; unknown types refused.
Payloads are built by the real discord.py LayoutView, so the shapes are what the bot would send."""

import discord
import pytest

from tests.fakediscord import rules


def body(view: discord.ui.LayoutView, **extra):
    return {"flags": rules.IS_COMPONENTS_V2, "components": view.to_components(), **extra}


def layout(*items) -> discord.ui.LayoutView:
    view = discord.ui.LayoutView(timeout=None)
    for item in items:
        view.add_item(item)
    return view


def error_code(payload) -> str:
    with pytest.raises(rules.ApiError) as caught:
        rules.check_payload(payload)
    assert caught.value.code == 50035
    errors = caught.value.errors
    while "_errors" not in errors:
        errors = next(iter(errors.values()))
    return errors["_errors"][0]["code"]


def test_valid_layout_passes():
    gallery = discord.ui.MediaGallery(discord.MediaGalleryItem("attachment://image1.png"))
    view = layout(
        discord.ui.Container(discord.ui.TextDisplay("a" * 3000), gallery),
        discord.ui.ActionRow(discord.ui.Button(label="Stop", custom_id="ilm:stop")),
    )
    rules.check_payload(body(view))


def test_limits_and_legacy_fields_refused():
    assert error_code(body(layout(discord.ui.TextDisplay("hi")), content="x")).startswith("MESSAGE_CANNOT")
    assert error_code(body(layout(discord.ui.TextDisplay("hi")), embeds=[{"title": "t"}])).startswith("MESSAGE_CANNOT")
    assert (
        error_code(body(layout(discord.ui.TextDisplay("a" * 2001), discord.ui.TextDisplay("b" * 2000))))
        == "MAX_TEXT_DISPLAY_CONTENT_LENGTH"
    )
    # discord.py's LayoutView itself refuses a 41st child, so this body is written out: 4 containers + 36 + 1
    containers = [{"type": 17, "components": [{"type": 10, "content": "x"}] * 9}] * 4
    many = {"flags": rules.IS_COMPONENTS_V2, "components": [*containers, {"type": 10, "content": "y"}]}
    assert error_code(many) == "BASE_TYPE_MAX_LENGTH"
    gallery = {"type": 12, "items": [{"media": {"url": f"attachment://{i}.png"}} for i in range(11)]}
    assert error_code({"flags": rules.IS_COMPONENTS_V2, "components": [gallery]}) == "BASE_TYPE_BAD_LENGTH"
    assert error_code({"flags": rules.IS_COMPONENTS_V2, "components": [{"type": 99}]}) == "UNION_TYPE_CHOICES"


def test_placement_rules_refused():
    """A section needs 1-3 text displays and an accessory (button or thumbnail); a container holds no
    container; a file component takes attachment:// only; a text display needs content; custom ids unique."""
    v2 = rules.IS_COMPONENTS_V2
    text = {"type": 10, "content": "hi"}
    button = {"type": 2, "style": 2, "label": "Go", "custom_id": "go"}
    assert error_code({"flags": v2, "components": [{"type": 9, "components": [text]}]}) == "BASE_TYPE_REQUIRED"
    assert (
        error_code({"flags": v2, "components": [{"type": 9, "components": [text], "accessory": text}]})
        == "UNION_TYPE_CHOICES"
    )
    assert (
        error_code({"flags": v2, "components": [{"type": 9, "components": [text] * 4, "accessory": button}]})
        == "BASE_TYPE_BAD_LENGTH"
    )
    rules.check_payload({"flags": v2, "components": [{"type": 9, "components": [text], "accessory": button}]})
    assert (
        error_code({"flags": v2, "components": [{"type": 17, "components": [{"type": 17, "components": [text]}]}]})
        == "UNION_TYPE_CHOICES"
    )
    assert (
        error_code({"flags": v2, "components": [{"type": 13, "file": {"url": "https://example.com/a.txt"}}]})
        == "UNFURLED_MEDIA_ITEM_URL_INVALID"
    )
    assert error_code({"flags": v2, "components": [{"type": 10, "content": ""}]}) == "BASE_TYPE_REQUIRED"
    assert (
        error_code(
            {"flags": v2, "components": [{"type": 1, "components": [button]}, {"type": 1, "components": [button]}]}
        )
        == "COMPONENT_CUSTOM_ID_DUPLICATED"
    )


def test_an_edit_of_a_v2_message_is_checked_as_v2():
    """The flag cannot be removed: an edit without it, of a message that has it, still may not carry content."""
    with pytest.raises(rules.ApiError) as caught:
        rules.check_payload({"content": "plain again", "components": []}, rules.IS_COMPONENTS_V2)
    assert caught.value.errors == {
        "content": {
            "_errors": [
                {
                    "code": "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
                    "message": "The 'content' field cannot be used when using MessageFlags.IS_COMPONENTS_V2",
                }
            ]
        }
    }
    rules.check_payload({"content": "plain"}, 0)
