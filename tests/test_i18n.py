"""bot.i18n: the bot's own strings in English and Chinese, and localised slash commands."""

from __future__ import annotations

import re
import string

import discord
import pytest

from bot import i18n


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_string_has_both_languages_with_the_same_placeholders() -> None:
    for key, entry in i18n.STRINGS.items():
        assert entry.get(i18n.EN) and entry.get(i18n.ZH), key
        assert _fields(entry[i18n.EN]) == _fields(entry[i18n.ZH]), key


@pytest.mark.parametrize(
    ("locale", "lang"),
    [
        (discord.Locale.chinese, i18n.ZH),
        (discord.Locale.taiwan_chinese, i18n.ZH),
        ("zh-CN", i18n.ZH),
        (discord.Locale.american_english, i18n.EN),
        (discord.Locale.japanese, i18n.EN),
        (None, i18n.EN),
        ("", i18n.EN),
    ],
)
def test_language_from_locale(locale: object, lang: str) -> None:
    assert i18n.lang_of(locale) == lang  # type: ignore[arg-type]


def test_format_and_fallbacks() -> None:
    assert i18n.t("queued", i18n.EN, n=3).endswith("position 3")
    assert "3" in i18n.t("queued", i18n.ZH, n=3) and "排队" in i18n.t("queued", i18n.ZH, n=3)
    assert i18n.t("rate_limited", "fr", n=5) == i18n.t("rate_limited", i18n.EN, n=5)
    assert i18n.t("no-such-key") == "no-such-key"
    i18n.register({"test_only": {i18n.EN: "hi {who}", i18n.ZH: "你好 {who}"}})
    assert i18n.t("test_only", i18n.ZH, who="x") == "你好 x"


async def test_translator_gives_valid_chinese_command_names() -> None:
    translator = i18n.Translator()
    context = discord.app_commands.TranslationContext(
        location=discord.app_commands.TranslationContextLocation.command_name, data=None
    )
    for english, chinese in i18n.COMMAND_TEXT.items():
        got = await translator.translate(discord.app_commands.locale_str(english), discord.Locale.chinese, context)
        assert got == chinese
        assert (
            await translator.translate(discord.app_commands.locale_str(english), discord.Locale.french, context) is None
        )
        if english.islower() and " " not in english:  # a command or option name: Discord's name rules
            assert re.fullmatch(r"[-_\w]{1,32}", chinese) and chinese == chinese.lower(), chinese
        else:
            assert len(chinese) <= 100


async def test_help_lists_every_command_in_both_languages() -> None:
    from bot.help import help_text

    tree = discord.app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))

    @tree.command(name="chat", description="Chat with InternLM")
    async def chat(interaction: discord.Interaction) -> None: ...

    @tree.command(name="newfeature", description="Something a new cog adds")
    async def newfeature(interaction: discord.Interaction) -> None: ...

    english, chinese = help_text(tree, i18n.EN), help_text(tree, i18n.ZH)
    assert "`/chat` — Chat with InternLM" in english and "`/newfeature`" in english
    assert "`/chat`（聊天） — 与书生·浦语聊天" in chinese
    assert "`/newfeature` — Something a new cog adds" in chinese  # untranslated text is shown as is
    assert len(english) <= 2000 and len(chinese) <= 2000
