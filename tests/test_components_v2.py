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
    view = layout(discord.ui.Container(discord.ui.TextDisplay("a" * 3000), gallery),
                  discord.ui.ActionRow(discord.ui.Button(label="Stop", custom_id="ilm:stop")))
    rules.check_payload(body(view))


def test_limits_and_legacy_fields_refused():
    assert error_code(body(layout(discord.ui.TextDisplay("hi")), content="x")).startswith("MESSAGE_CANNOT")
    assert error_code(body(layout(discord.ui.TextDisplay("hi")), embeds=[{"title": "t"}])).startswith("MESSAGE_CANNOT")
    assert error_code(body(layout(discord.ui.TextDisplay("a" * 2001), discord.ui.TextDisplay("b" * 2000)))
                      ) == "MAX_TEXT_DISPLAY_CONTENT_LENGTH"
    # discord.py's LayoutView itself refuses a 41st child, so this body is written out: 4 containers + 36 + 1
    containers = [{"type": 17, "components": [{"type": 10, "content": "x"}] * 9}] * 4
    many = {"flags": rules.IS_COMPONENTS_V2, "components": [*containers, {"type": 10, "content": "y"}]}
    assert error_code(many) == "BASE_TYPE_MAX_LENGTH"
    gallery = {"type": 12, "items": [{"media": {"url": f"attachment://{i}.png"}} for i in range(11)]}
    assert error_code({"flags": rules.IS_COMPONENTS_V2, "components": [gallery]}) == "BASE_TYPE_BAD_LENGTH"
    assert error_code({"flags": rules.IS_COMPONENTS_V2, "components": [{"type": 99}]}) == "UNION_TYPE_CHOICES"
